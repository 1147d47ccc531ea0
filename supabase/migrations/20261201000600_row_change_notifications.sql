-- Waiting callers (REST wait=true and event streams, MCP) follow a request by notification instead of
-- polling it: every change a client can see (status, progress, output, reason) sends its id on
-- the `edit_request_changes` channel. NOTIFY is transactional and folds duplicates within one
-- transaction, so a heartbeat costs one small message, and a lease-only renewal none.

create or replace function public.notify_edit_request_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if (new.status, new.progress, new.output_path, new.error_code)
       is distinct from (old.status, old.progress, old.output_path, old.error_code) then
    perform pg_notify('edit_request_changes', new.id::text);
  end if;
  return null;
end
$$;

revoke all on function public.notify_edit_request_change() from public, anon, authenticated;

drop trigger if exists edit_requests_notify_change on public.edit_requests;
create trigger edit_requests_notify_change
  after update on public.edit_requests
  for each row execute function public.notify_edit_request_change();
