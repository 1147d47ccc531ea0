-- The LoRA allowlist: which LoRAs a request may name (docs/speed.md).
--
-- edit_requests.loras is a jsonb array of at most 3 {"name": text, "scale": number|null}; its shape
-- is a CHECK (edit_request_loras_valid, 10_requests.sql). public.edit_loras is the operator's
-- allowlist (it mirrors the processor's LORAS setting). Users may read the enabled names, never
-- write them. A request naming a LoRA that is not allowlisted and enabled is refused at insert:
-- SQLSTATE 23514 (check_violation), constraint edit_requests_loras_allowed, message
-- "unknown LoRA: <name>".

create table public.edit_loras (
  name text primary key,
  description text not null default '',
  enabled boolean not null default true,
  created_at timestamptz not null default now(),
  constraint edit_loras_name_valid check (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$')
);

comment on table public.edit_loras is
  'Operator allowlist of request LoRAs (the names of the processor''s LORAS setting). Service role writes; users read enabled names.';

-- Security definer: users need no access to the table beyond reading it, and a disabled name is
-- refused even though users cannot see it.
create function public.edit_requests_check_loras()
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

create trigger edit_requests_check_loras
  before insert or update of loras on public.edit_requests
  for each row
  when (new.loras is distinct from '[]'::jsonb)
  execute function public.edit_requests_check_loras();

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_loras enable row level security;
revoke all on public.edit_loras from anon, authenticated;
grant select on public.edit_loras to authenticated;
grant all on public.edit_loras to service_role;
create policy edit_loras_read_enabled on public.edit_loras
  for select to authenticated
  using (enabled);

revoke all on function public.edit_requests_check_loras() from public, anon, authenticated;
grant execute on function public.edit_requests_check_loras() to service_role;
