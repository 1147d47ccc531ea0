-- A new live preview of a watched row notifies its watchers (issue 23): the REST API's event streams
-- and MCP's waits send each preview as it comes (preview_url, preview_step), not at the next progress
-- write or the 5 s fallback re-read. Previews are written at most once a second per job
-- (PREVIEW_INTERVAL_SECONDS), and only watched rows notify at all (migration 20261201001500).
--
-- The function of 20261201001500 with preview_step in the compared columns.

create or replace function public.notify_edit_request_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if (new.status, new.progress, new.preview_step, new.output_path, new.error_code)
       is distinct from (old.status, old.progress, old.preview_step, old.output_path, old.error_code)
     and exists (select 1 from public.edit_request_watches w
                  where w.request_id = new.id and w.expires_at > now()) then
    perform pg_notify('edit_request_changes', new.id::text);
  end if;
  return null;
end
$$;
