-- Speed presets and per-request LoRAs (issue #12; docs/speed.md).
--
-- * edit_requests.speed: 'quality' | 'fast' | 'fastest', or null for the deployment's SPEED.
-- * edit_requests.loras: a jsonb array of at most 3 {"name": text, "scale": number|null}.
-- * public.edit_loras: the operator's allowlist of LoRA names (mirrors the processor's LORAS
--   setting). Users may read the enabled names, never write them. A request naming a LoRA that
--   is not allowlisted and enabled is refused at insert: SQLSTATE 23514 (check_violation),
--   constraint edit_requests_loras_allowed, message "unknown LoRA: <name>".
--
-- The claim function needs no change: claim_edit_request returns setof public.edit_requests
-- (`returning r.*`), so the new columns come back with every claim. Not redefining it here
-- keeps this migration from overriding any other migration's version of it.

create table if not exists public.edit_loras (
  name text primary key,
  description text not null default '',
  enabled boolean not null default true,
  created_at timestamptz not null default now(),
  constraint edit_loras_name_valid check (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$')
);

comment on table public.edit_loras is
  'Operator allowlist of request LoRAs (the names of the processor''s LORAS setting). Service role writes; users read enabled names.';

alter table public.edit_loras enable row level security;
revoke all on public.edit_loras from anon, authenticated;
grant select on public.edit_loras to authenticated;
grant all on public.edit_loras to service_role;
drop policy if exists edit_loras_read_enabled on public.edit_loras;
create policy edit_loras_read_enabled on public.edit_loras
  for select to authenticated
  using (enabled);

-- Shape only (no table access, so usable in a CHECK): an array of at most 3 objects with a
-- valid "name", an optional numeric "scale" in [-4, 4], no other keys, no name twice.
create or replace function public.edit_request_loras_valid(p_loras jsonb)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_item jsonb;
  v_names text[] := '{}';
begin
  if p_loras is null or jsonb_typeof(p_loras) <> 'array' or jsonb_array_length(p_loras) > 3 then
    return false;
  end if;
  for v_item in select e.item from jsonb_array_elements(p_loras) as e(item) loop
    if jsonb_typeof(v_item) <> 'object'
       or jsonb_typeof(v_item -> 'name') is distinct from 'string'
       or (v_item ->> 'name') !~ '^[a-z0-9][a-z0-9_.-]{0,63}$'
       or (v_item ->> 'name') = any (v_names)
       or exists (select 1 from jsonb_object_keys(v_item) as k(key) where k.key not in ('name', 'scale')) then
      return false;
    end if;
    if v_item ? 'scale' and jsonb_typeof(v_item -> 'scale') <> 'null' then
      if jsonb_typeof(v_item -> 'scale') <> 'number' or (v_item ->> 'scale')::numeric not between -4 and 4 then
        return false;
      end if;
    end if;
    v_names := v_names || (v_item ->> 'name');
  end loop;
  return true;
end
$$;

alter table public.edit_requests
  add column if not exists speed text,
  add column if not exists loras jsonb not null default '[]'::jsonb;

alter table public.edit_requests
  drop constraint if exists edit_requests_speed_valid,
  add constraint edit_requests_speed_valid
    check (speed is null or speed in ('quality', 'fast', 'fastest')),
  drop constraint if exists edit_requests_loras_valid,
  add constraint edit_requests_loras_valid
    check (public.edit_request_loras_valid(loras));

comment on column public.edit_requests.speed is
  'quality (40 steps, true CFG) | fast (Lightning 8 steps, CFG off) | fastest (Lightning 4 steps); null: the deployment default. What ran is in result.speed.';
comment on column public.edit_requests.loras is
  'Up to 3 allowlisted LoRAs (public.edit_loras) as [{"name", "scale"}]; scale null: the operator default. What ran is in result.loras.';

-- The allowlist is enforced at insert. Security definer: users need no access to the table
-- beyond reading it, and a disabled name is refused even though users cannot see it.
create or replace function public.edit_requests_check_loras()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_name text;
begin
  if not public.edit_request_loras_valid(new.loras) then
    return new;  -- malformed: the edit_requests_loras_valid check refuses it with its own name
  end if;
  for v_name in select e.item ->> 'name' from jsonb_array_elements(new.loras) as e(item) loop
    if not exists (select 1 from public.edit_loras l where l.name = v_name and l.enabled) then
      raise exception 'unknown LoRA: %', v_name
        using errcode = '23514',
              constraint = 'edit_requests_loras_allowed',
              hint = 'allowed names are the enabled rows of public.edit_loras';
    end if;
  end loop;
  return new;
end
$$;

revoke execute on function public.edit_requests_check_loras() from public, anon, authenticated;

drop trigger if exists edit_requests_check_loras on public.edit_requests;
create trigger edit_requests_check_loras
  before insert or update of loras on public.edit_requests
  for each row
  when (new.loras is distinct from '[]'::jsonb)
  execute function public.edit_requests_check_loras();

grant insert (speed, loras) on public.edit_requests to authenticated;
