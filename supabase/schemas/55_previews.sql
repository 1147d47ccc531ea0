-- Live previews (docs/previews.md): while an edit runs, the worker uploads a small picture of the
-- edit so far next to its output (`edit-outputs/{user_id}/{id}.preview.webp`, overwritten by each
-- preview) and records its path and step on the row (edit_requests.preview_path, preview_step and
-- their CHECKs are in 10_requests.sql). Clients see it through the same Realtime subscription (and
-- REST reads) as status and progress; the Storage policy "edit outputs: users read their results"
-- (15_storage.sql) already lets the owner read it (first folder = their id).
--
-- Who may write: only the worker that holds the row's lease, while the row is processing, through
-- preview_edit_request (service_role only). A preview that arrives after the job ended (succeeded,
-- failed, canceled, requeued, or another worker's now) writes nothing.

create function public.preview_edit_request(
  p_id uuid,
  p_worker_id text,
  p_path text,
  p_step integer
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_path is null or p_path = '' or p_step is null or p_step < 1 then
    raise exception 'preview_edit_request: a path and a step of at least 1 are required'
      using errcode = '22023';
  end if;
  -- Fenced like heartbeat and complete: the lease holder, while processing. Steps only go up,
  -- so a preview overtaken by a later one on its way is not written over it.
  update public.edit_requests r
     set preview_path = p_path,
         preview_step = p_step
   where r.id = p_id
     and r.claimed_by = p_worker_id
     and r.status = 'processing'
     and (r.preview_step is null or r.preview_step < p_step);
  return found;
end
$$;

comment on function public.preview_edit_request(uuid, text, text, integer) is
  'The worker holding the lease records the latest live preview of a processing request (docs/previews.md).';

-- A new attempt starts its previews afresh: the previous attempt's picture and step are cleared when
-- a row enters processing or a lapsed lease is claimed again (each claim counts an attempt), so steps
-- go up again from 1 and a client never sees the old attempt's preview as the new one's. A final
-- request (succeeded, failed, canceled) stops pointing at its preview, which is stale; the worker
-- deletes the object (best effort: one left by a crashed worker is overwritten by the next attempt,
-- or stays until operators clean it). The WHEN clause keeps the trigger off the queue's hottest path
-- (a plpgsql call per claim and completion otherwise).
create function public.edit_requests_reset_preview()
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

create trigger edit_requests_reset_preview
  before update of status, attempts on public.edit_requests
  for each row
  when ((new.status = 'processing'
         and (old.status is distinct from 'processing' or new.attempts is distinct from old.attempts))
        or (new.status in ('succeeded', 'failed', 'canceled') and new.preview_path is not null))
  execute function public.edit_requests_reset_preview();

-- Access ------------------------------------------------------------------------------------------

revoke all on function
  public.preview_edit_request(uuid, text, text, integer),
  public.edit_requests_reset_preview()
  from public, anon, authenticated;
grant execute on function
  public.preview_edit_request(uuid, text, text, integer),
  public.edit_requests_reset_preview()
  to service_role;
