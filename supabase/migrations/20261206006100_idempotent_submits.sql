-- Idempotent submits (issue 23, section 3): a client that retries a submit (a timeout, a dropped
-- connection, a double click) names the same key and gets the request it already made, never a
-- second one that runs (and is paid for) twice. The key is unique per user on edit_requests and on
-- edit_batches, so apps inserting rows through PostgREST get the same guarantee (409 on the second
-- insert: read the first back by its key). The fingerprint is a hash of the body the REST API and
-- MCP made the request from: the same key with another body is refused there
-- (idempotency_key_reused). Keys live as long as their row. docs/contract.md, docs/usage.md.
--
-- Columns are appended; the unique indexes are partial, so rows without a key (most) cost nothing.

alter table public.edit_requests
  add column idempotency_key text,
  add column idempotency_fingerprint text,
  add constraint edit_requests_idempotency_key_valid
    check (char_length(idempotency_key) <= 255 and idempotency_key ~ '^[\x21-\x7E]+$'),
  add constraint edit_requests_idempotency_fingerprint_length check (char_length(idempotency_fingerprint) <= 100);

comment on column public.edit_requests.idempotency_key is
  'The client''s key for safe retries (Idempotency-Key): unique per user; a retry with it gets this request.';
comment on column public.edit_requests.idempotency_fingerprint is
  'A hash of the body the REST API or MCP made this request from; another body with the same key is refused.';

create unique index edit_requests_idempotency_key_unique
  on public.edit_requests (user_id, idempotency_key) where idempotency_key is not null;

grant select (idempotency_key, idempotency_fingerprint) on public.edit_requests to authenticated;
grant insert (idempotency_key, idempotency_fingerprint) on public.edit_requests to authenticated;

alter table public.edit_batches
  add column idempotency_key text,
  add column idempotency_fingerprint text,
  add constraint edit_batches_idempotency_key_valid
    check (char_length(idempotency_key) <= 255 and idempotency_key ~ '^[\x21-\x7E]+$'),
  add constraint edit_batches_idempotency_fingerprint_length check (char_length(idempotency_fingerprint) <= 100);

create unique index edit_batches_idempotency_key_unique
  on public.edit_batches (user_id, idempotency_key) where idempotency_key is not null;

grant insert (idempotency_key, idempotency_fingerprint) on public.edit_batches to authenticated;
