-- Retention: inputs and outputs of finished requests, and orphan uploads, are deleted after
-- operator-set ages, through the Storage API (never by deleting storage.objects rows: that leaves
-- the files, and Supabase forbids it: https://supabase.com/docs/guides/storage/schema/design,
-- supabase/storage migrations/tenant/0050-prevent-direct-deletes.sql).
--
--  * edit_retention_candidates: a bounded list of objects due (service_role only). It takes a
--    lease, so one processor at a time runs retention; others get nothing until it lapses.
--  * The processor deletes them with Storage's bulk delete (DELETE /object/{bucket}).
--  * edit_retention_mark: the rows keep their history and show what is gone
--    (inputs_expired_at, output_expired_at), decided by what storage.objects no longer holds.
--
-- Never an input of a live request (awaiting_image, queued, processing), even when a finished
-- request names the same path. The candidate list excludes them, but a request may be inserted
-- between the list and the delete, so the decision is taken again where the delete happens:
-- edit_requests_keep_live_inputs, a BEFORE DELETE trigger on storage.objects, runs inside Storage's
-- own delete transaction under the path's slot lock (15_storage.sql), and keeps a row a live
-- request names (Storage then leaves its file and leaves it out of its answer, as it does for
-- RLS). The insert takes the same slot lock before it looks at Storage
-- (edit_requests_before_insert, 25_fair_sharing_and_limits.sql). So whichever commits first wins:
-- the delete (then the new request waits for its upload) or the insert (then the object stays).
-- Operator reference: docs/retention.md.

-- Finished rows still holding objects, oldest first; and who names a path (orphans, live inputs).
create index edit_requests_inputs_retention_idx
  on public.edit_requests (finished_at)
  where status in ('succeeded', 'failed', 'canceled') and inputs_expired_at is null
    and cardinality(input_paths) > 0;  -- creations have no inputs: never due, never rescanned
create index edit_requests_output_retention_idx
  on public.edit_requests (finished_at)
  where status = 'succeeded' and output_expired_at is null and output_path is not null;
create index edit_requests_input_paths_idx
  on public.edit_requests using gin (input_paths);

-- A retried request (retry_edit_request: failed or canceled back to queued or awaiting_image) is live
-- again: its marks go, so what it uploads anew and produces expires in its turn.
create function public.edit_requests_clear_expiry_on_retry()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status in ('succeeded', 'failed', 'canceled') and new.status not in ('succeeded', 'failed', 'canceled') then
    new.inputs_expired_at := null;
    new.output_expired_at := null;
  end if;
  return new;
end
$$;

create trigger edit_requests_clear_expiry_on_retry
  before update of status on public.edit_requests
  for each row
  when (old.status in ('succeeded', 'failed', 'canceled') and new.status not in ('succeeded', 'failed', 'canceled'))
  execute function public.edit_requests_clear_expiry_on_retry();

-- One retention run at a time ---------------------------------------------------------------------

create table public.edit_retention_state (
  id boolean primary key default true check (id),
  held_by text,
  lease_expires_at timestamptz,
  last_run_at timestamptz,
  orphans_after text  -- where the bounded orphan scan resumes (object names, in index order)
);
insert into public.edit_retention_state (id) values (true);

-- The guard ---------------------------------------------------------------------------------------

create function public.edit_requests_keep_live_inputs()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Runs in the deleting transaction (Storage's), for every deleted row. Under the slot lock an
  -- insert racing with this delete either committed already (seen here: the row is kept) or
  -- waits for this transaction and then finds the object gone (edit_requests_before_insert looks
  -- under the same slot lock).
  perform pg_advisory_xact_lock(7051, public.edit_request_lock_slot(old.bucket_id, old.name));
  if exists (
    select 1 from public.edit_requests r
     where r.status in ('awaiting_image', 'queued', 'processing')
       and r.input_bucket = old.bucket_id
       and r.input_paths @> array[old.name]
  ) then
    return null;  -- not deleted: a live request needs it
  end if;
  return old;
end
$$;

create trigger edit_requests_keep_live_inputs
  before delete on storage.objects
  for each row execute function public.edit_requests_keep_live_inputs();

-- Candidates --------------------------------------------------------------------------------------

create function public.edit_retention_candidates(
  p_worker_id text,
  p_input_age interval,
  p_output_age interval,
  p_orphan_grace interval,
  p_limit integer,
  p_lease_seconds integer default 600
)
returns table (kind text, bucket text, path text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_left integer := p_limit;
  v_done text[] := '{}';
  v_row record;
  v_name text;
  v_blocked boolean;
  v_last_finish timestamptz;
  v_written timestamptz;
  v_after text;
  v_scanned integer := 0;
  v_last_name text;
begin
  -- Bounds as processor/domain/rules.py has them (RETENTION_*): a null age keeps forever.
  if p_worker_id is null or p_worker_id = '' then
    raise exception 'edit_retention_candidates: p_worker_id is required' using errcode = '22023';
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception 'edit_retention_candidates: p_limit must be between 1 and 1000' using errcode = '22023';
  end if;
  if p_input_age <= interval '0' or p_output_age <= interval '0' then
    raise exception 'edit_retention_candidates: ages must be positive (null keeps forever)' using errcode = '22023';
  end if;
  if p_orphan_grace < interval '1 hour' then
    raise exception 'edit_retention_candidates: p_orphan_grace must be at least 1 hour' using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds < 1 then
    raise exception 'edit_retention_candidates: p_lease_seconds must be positive' using errcode = '22023';
  end if;

  update public.edit_retention_state s
     set held_by = p_worker_id, lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         last_run_at = now()
   where s.id and (s.held_by is null or s.held_by = p_worker_id or s.lease_expires_at < now());
  if not found then
    return;  -- another processor is running retention
  end if;

  -- Loops, not joins: rows are read oldest first through the partial indexes and the run stops
  -- at p_limit; who else names a path is one probe of edit_requests_input_paths_idx per path (a
  -- join was planned as a hash on the bucket alone: seconds for 20,000 due rows).

  -- Inputs of finished requests. A path is due only when every row naming it finished before
  -- the cutoff (a live row, or one finished since, keeps it), and only the version those rows
  -- used: an object written after the last of them finished is not theirs (the orphan rule).
  if p_input_age is not null then
    <<inputs>>
    for v_row in
      select r.input_bucket as b, r.input_paths as names
        from public.edit_requests r
       where r.status in ('succeeded', 'failed', 'canceled')
         and r.inputs_expired_at is null
         and cardinality(r.input_paths) > 0
         and r.finished_at < now() - p_input_age
       order by r.finished_at, r.id
    loop
      foreach v_name in array v_row.names loop
        continue when v_name is null or (v_row.b || '/' || v_name) = any (v_done);
        -- An aggregate, not EXISTS: its generic plan is the index probe (EXISTS's was a seq scan).
        select bool_or(not (x.status in ('succeeded', 'failed', 'canceled') and x.finished_at < now() - p_input_age)),
               max(x.finished_at)
          into v_blocked, v_last_finish
          from public.edit_requests x
         where x.input_bucket = v_row.b and x.input_paths @> array[v_name];
        continue when v_blocked;
        select coalesce(o.updated_at, o.created_at) into v_written
          from storage.objects o where o.bucket_id = v_row.b and o.name = v_name;
        continue when v_written > v_last_finish;
        v_done := v_done || (v_row.b || '/' || v_name);
        kind := 'input'; bucket := v_row.b; path := v_name;
        return next;
        v_left := v_left - 1;
        exit inputs when v_left = 0;
      end loop;
    end loop;
  end if;

  -- Outputs of succeeded requests (never one a live request takes as its input).
  if p_output_age is not null and v_left > 0 then
    for v_row in
      select r.output_bucket as b, r.output_path as n
        from public.edit_requests r
       where r.status = 'succeeded' and r.output_expired_at is null and r.output_path is not null
         and r.finished_at < now() - p_output_age
       order by r.finished_at, r.id
    loop
      continue when (v_row.b || '/' || v_row.n) = any (v_done);
      select bool_or(l.status in ('awaiting_image', 'queued', 'processing')) into v_blocked
        from public.edit_requests l
       where l.input_bucket = v_row.b and l.input_paths @> array[v_row.n];
      continue when v_blocked;
      v_done := v_done || (v_row.b || '/' || v_row.n);
      kind := 'output'; bucket := v_row.b; path := v_row.n;
      return next;
      v_left := v_left - 1;
      exit when v_left = 0;
    end loop;
  end if;

  -- Orphans: input-bucket objects older than the grace that no row needs (no row names them, or
  -- only rows that finished before the object was last written). Every object must be looked
  -- at, so each run scans at most 20 x p_limit of them in name order (bucketid_objname),
  -- resuming where the last run stopped, and starts over at the end of the bucket.
  if p_orphan_grace is not null and v_left > 0 then
    select s.orphans_after into v_after from public.edit_retention_state s where s.id;
    for v_row in
      select o.bucket_id as b, o.name as n, coalesce(o.updated_at, o.created_at) as written
        from storage.objects o
       where o.bucket_id = 'edit-inputs' and o.name > coalesce(v_after, '')
       order by o.name
       limit 20 * p_limit
    loop
      v_scanned := v_scanned + 1;
      v_last_name := v_row.n;
      continue when v_row.written >= now() - p_orphan_grace or (v_row.b || '/' || v_row.n) = any (v_done);
      select bool_or(r.status not in ('succeeded', 'failed', 'canceled') or r.finished_at >= v_row.written)
        into v_blocked
        from public.edit_requests r
       where r.input_bucket = v_row.b and r.input_paths @> array[v_row.n];
      continue when v_blocked;
      kind := 'orphan'; bucket := v_row.b; path := v_row.n;
      return next;
      v_left := v_left - 1;
      exit when v_left = 0;
    end loop;
    update public.edit_retention_state s
       set orphans_after = case when v_left = 0 or v_scanned = 20 * p_limit then v_last_name end
     where s.id;
  end if;
end
$$;

comment on function public.edit_retention_candidates(text, interval, interval, interval, integer, integer) is
  'Objects due for deletion (kind input, output or orphan), at most p_limit; empty while another '
  'worker holds the retention lease. Delete them through the Storage API, then edit_retention_mark.';

-- Marks -------------------------------------------------------------------------------------------

create function public.edit_retention_mark(p_bucket text, p_paths text[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_gone text[];
  v_outputs integer;
  v_inputs integer;
begin
  -- What Storage no longer holds, looked up here, whatever the caller claims: a path Storage
  -- kept (a live request needs it, or the delete failed) marks nothing and is tried again.
  v_gone := array(
    select distinct p.path from unnest(coalesce(p_paths, '{}')) as p(path)
     where p.path is not null
       and not exists (select 1 from storage.objects o where o.bucket_id = p_bucket and o.name = p.path));
  if cardinality(v_gone) = 0 then
    return 0;
  end if;

  update public.edit_requests r
     set output_expired_at = now()
   where r.status = 'succeeded' and r.output_expired_at is null
     and r.output_bucket = p_bucket and r.output_path = any(v_gone);
  get diagnostics v_outputs = row_count;

  -- A finished row's inputs are expired once none of them is left in Storage.
  update public.edit_requests r
     set inputs_expired_at = now()
   where r.status in ('succeeded', 'failed', 'canceled') and r.inputs_expired_at is null
     and r.input_bucket = p_bucket and r.input_paths && v_gone
     and not exists (select 1 from storage.objects o
                      where o.bucket_id = r.input_bucket and o.name = any(r.input_paths));
  get diagnostics v_inputs = row_count;
  return v_outputs + v_inputs;
end
$$;

comment on function public.edit_retention_mark(text, text[]) is
  'After a Storage delete: marks output_expired_at / inputs_expired_at of finished rows whose '
  'objects are gone; returns the rows marked.';

create function public.edit_retention_release(p_worker_id text)
returns boolean
language sql
security definer
set search_path = ''
as $$
  update public.edit_retention_state s set held_by = null, lease_expires_at = null
   where s.id and s.held_by = p_worker_id
  returning true
$$;

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_retention_state enable row level security;
revoke all on public.edit_retention_state from public, anon, authenticated;
grant all on public.edit_retention_state to service_role;

revoke all on function
  public.edit_requests_clear_expiry_on_retry(),
  public.edit_requests_keep_live_inputs(),
  public.edit_retention_candidates(text, interval, interval, interval, integer, integer),
  public.edit_retention_mark(text, text[]),
  public.edit_retention_release(text)
  from public, anon, authenticated;
grant execute on function
  public.edit_requests_clear_expiry_on_retry(),
  public.edit_requests_keep_live_inputs(),
  public.edit_retention_candidates(text, interval, interval, interval, integer, integer),
  public.edit_retention_mark(text, text[]),
  public.edit_retention_release(text)
  to service_role;
