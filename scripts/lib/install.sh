# Shared by scripts/dev and scripts/test: a virtual environment with the exact tested set.
# Idempotent and fast when nothing changed: a stamp holds the hash of what was installed
# (pyproject.toml, constraints.txt, the Python version); pip runs only when it differs.

require_python() {
  PYTHON=${PYTHON:-python3}
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
}

# install_into VENV EXTRA [EXTRA_THAT_ALSO_COVERS_IT ...]
install_into() {
  local venv=$1 extra=$2
  shift 2
  require_python
  local want
  want=$("$PYTHON" -c 'import hashlib, sys; h = hashlib.sha256(sys.version.encode())
for name in ("pyproject.toml", "constraints.txt"):
    h.update(open(name, "rb").read())
print(h.hexdigest())')
  local covering
  for covering in "$extra" "$@"; do
    if [[ -x $venv/bin/python && -f $venv/.installed-$covering && $(cat "$venv/.installed-$covering") == "$want" ]]; then
      return 0
    fi
  done
  echo "installing .[$extra] into $venv (constraints.txt; a first install takes a few minutes)" >&2
  [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
  rm -f "$venv"/.installed-*
  # Torch first, pinned: an unpinned torch request would pull a multi-GB build of another version.
  # shellcheck disable=SC2046
  "$venv/bin/pip" install -q --disable-pip-version-check $(grep -E '^(torch|torchvision)==' constraints.txt)
  "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e ".[$extra]"
  echo "$want" >"$venv/.installed-$extra"
}
