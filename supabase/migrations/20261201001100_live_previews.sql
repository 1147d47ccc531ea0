-- Live previews (docs/previews.md): while an edit runs, the worker uploads a small picture of the
-- edit so far next to its output (`edit-outputs/{user_id}/{id}.preview.webp`, overwritten by each
-- preview) and records its path and step on the row. Clients see it through the same Realtime
-- subscription (and REST reads) as status and progress; the existing Storage policy "edit outputs:
-- users read their results" already lets the owner read it (first folder = their id).
--
-- Who may write: only the worker that holds the row's lease, while the row is processing, through
-- preview_edit_request (service_role only). A preview that arrives after the job ended (succeeded,
-- failed, canceled, requeued, or another worker's now) writes nothing.

alter table public.edit_requests add column if not exists preview_path text;
alter table public.edit_requests add column if not exists preview_step integer;

comment on column public.edit_requests.preview_path is
  'Object (in output_bucket) holding the latest live preview of a running edit; null before the first.';
comment on column public.edit_requests.preview_step is
  'The denoising step the preview at preview_path shows (1-based); goes up within one attempt.';

do $$
begin
  -- rules.MAX_STEPS bounds the step, as edit_requests_steps_range bounds num_inference_steps
  -- (tests/test_previews.py keeps them equal).
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_preview_step_range') then
    alter table public.edit_requests add constraint edit_requests_preview_step_range
      check (preview_step is null or preview_step between 1 and 100);
  end if;
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_preview_together') then
    alter table public.edit_requests add constraint edit_requests_preview_together
      check ((preview_path is null) = (preview_step is null));
  end if;
end
$$;

create or replace function public.preview_edit_request(
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

revoke execute on function public.preview_edit_request(uuid, text, text, integer) from public, anon, authenticated;
grant execute on function public.preview_edit_request(uuid, text, text, integer) to service_role;

-- A new attempt starts its previews afresh: the previous attempt's picture and step are cleared
-- when a row enters processing or a lapsed lease is claimed again (each claim counts an attempt), so steps go up again
-- from 1 and a client never sees the old attempt's preview as the new one's.
create or replace function public.edit_requests_reset_preview()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.status = 'processing'
     and (old.status is distinct from 'processing' or new.attempts is distinct from old.attempts) then
    new.preview_path := null;
    new.preview_step := null;
  end if;
  return new;
end
$$;

revoke all on function public.edit_requests_reset_preview() from public, anon, authenticated;

drop trigger if exists edit_requests_reset_preview on public.edit_requests;
create trigger edit_requests_reset_preview
  before update of status, attempts on public.edit_requests
  for each row execute function public.edit_requests_reset_preview();

-- The owner sees them (column grants, as migration 20261201000700 set up).
grant select (preview_path, preview_step) on public.edit_requests to authenticated;
