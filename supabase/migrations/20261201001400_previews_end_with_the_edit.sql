-- A live preview is a picture of an edit in progress: once the request is final (succeeded,
-- failed, canceled) it is stale, so the row stops pointing at it, and the worker deletes the
-- object (processor/core/worker/pipeline.py; best effort: a preview left by a crashed worker is
-- overwritten by the next attempt, or stays until operators clean it). Without this every
-- request left a second object next to its output for good.

create or replace function public.edit_requests_reset_preview()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if (new.status = 'processing'
      and (old.status is distinct from 'processing' or new.attempts is distinct from old.attempts))
     or (new.status in ('succeeded', 'failed', 'canceled') and new.preview_path is not null) then
    new.preview_path := null;
    new.preview_step := null;
  end if;
  return new;
end
$$;

revoke all on function public.edit_requests_reset_preview() from public, anon, authenticated;

-- The update triggers a claim and a completion meet run only when they have work (a plpgsql call
-- per update otherwise, on the queue's hottest path): this one and retention's.
drop trigger if exists edit_requests_reset_preview on public.edit_requests;
create trigger edit_requests_reset_preview
  before update of status, attempts on public.edit_requests
  for each row
  when ((new.status = 'processing'
         and (old.status is distinct from 'processing' or new.attempts is distinct from old.attempts))
        or (new.status in ('succeeded', 'failed', 'canceled') and new.preview_path is not null))
  execute function public.edit_requests_reset_preview();

drop trigger if exists edit_requests_clear_expiry_on_retry on public.edit_requests;
create trigger edit_requests_clear_expiry_on_retry
  before update of status on public.edit_requests
  for each row
  when (old.status in ('succeeded', 'failed', 'canceled') and new.status not in ('succeeded', 'failed', 'canceled'))
  execute function public.edit_requests_clear_expiry_on_retry();
