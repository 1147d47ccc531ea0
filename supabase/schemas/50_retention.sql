-- Retention: inputs and outputs of finished requests, and orphan uploads, are deleted after
-- operator-set ages, through the Storage API (never by deleting storage.objects rows: that leaves
-- the files, and Supabase forbids it: https://supabase.com/docs/guides/storage/schema/design,
-- supabase/storage migrations/tenant/0050-prevent-direct-deletes.sql).
--
--  * edit_retention_candidates: a bounded list of objects due (service_role only). It takes a
--    lease, so one processor at a time runs retention; others get nothing until it lapses. Each
--    run looks at a bounded window of rows and objects and resumes where the last one stopped
--    (edit_retention_state), decides each distinct path once, and remembers a path it found
--    blocked (edit_retention_held_paths) for as long as it must stay: what one user writes can
--    make a run longer by what it reads once, never by the square of it.
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
-- (finished_at, id): the order runs resume in, exact even when a batch finished in one statement.
create index edit_requests_inputs_retention_idx
  on public.edit_requests (finished_at, id)
  where status in ('succeeded', 'failed', 'canceled') and inputs_expired_at is null
    and cardinality(input_paths) > 0;  -- creations have no inputs: never due, never rescanned
create index edit_requests_output_retention_idx
  on public.edit_requests (finished_at, id)
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
  orphans_after text,  -- where the bounded orphan scan resumes (object names, in index order)
  -- Where the bounded scans of finished rows resume: the first row the next run looks at, in
  -- (finished_at, id) order; null starts over from the oldest.
  inputs_from_at timestamptz,
  inputs_from_id uuid,
  outputs_from_at timestamptz,
  outputs_from_id uuid
);
insert into public.edit_retention_state (id) values (true);

-- Paths found blocked (a live request names them, or one finished less than the input age ago),
-- and the latest time a request naming them was live or finished, as then seen: the path stays
-- blocked at least until that time plus the input age (a live request finishes later than it was
-- seen live, and a new request naming the path only moves the time on), so runs skip it without
-- reading the rows that name it. Only ever a reason to keep an object, never to delete one: a
-- stale entry keeps it longer, then the path is decided again. Entries past the input age are
-- pruned when the input scan starts over.
create table public.edit_retention_held_paths (
  bucket text not null,
  path text not null,
  named_until timestamptz not null,
  primary key (bucket, path)
);
comment on table public.edit_retention_held_paths is
  'Input paths retention found blocked, skipped while named_until is within the input age '
  '(service_role only; a cache that only ever keeps objects longer).';

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
set enable_seqscan = off
as $$
declare
  v_left integer := p_limit;
  v_window integer := 20 * p_limit;
  v_state public.edit_retention_state;
  v_cutoff timestamptz;
  v_chunk integer;
  v_ids uuid[];
  v_finished timestamptz[];
  v_next_at timestamptz;
  v_next_id uuid;
  v_path record;
  v_row record;
  v_blocked boolean;
  v_named timestamptz;
  v_seen integer := 0;
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
   where s.id and (s.held_by is null or s.held_by = p_worker_id or s.lease_expires_at < now())
  returning * into v_state;
  if not found then
    return;  -- another processor is running retention
  end if;

  -- Each kind looks at no more than 20 x p_limit rows (or objects) a run, in index order from
  -- where the last run stopped (edit_retention_state), and starts over at the end: a run costs
  -- what it looks at, however many rows wait, and whatever a user made block, every row is
  -- looked at again within a cycle. Probes, not joins: who else names a path is one probe of
  -- edit_requests_input_paths_idx (a join was planned as a hash on the bucket alone: seconds for
  -- 20,000 due rows). Every statement here is meant as index probes, and `enable_seqscan = off`
  -- (this function's setting) keeps the planner to them where a small or freshly changed table
  -- makes a scan look cheaper: a scan per probe is what made this quadratic.

  -- Inputs of finished requests. A path is due only when every row naming it finished before
  -- the cutoff (a live row, or one finished since, keeps it), and only the version those rows
  -- used: an object written after the last of them finished is not theirs (the orphan rule).
  if p_input_age is not null then
    v_cutoff := now() - p_input_age;
    v_next_at := v_state.inputs_from_at;
    v_next_id := v_state.inputs_from_id;
    -- Chunk by chunk (the window's rows are fetched as needed: a run that fills up early reads
    -- little), each from the first row not yet decided.
    <<chunks>>
    while v_left > 0 and v_seen < v_window loop
      v_chunk := least(greatest(p_limit, 50), v_window - v_seen);
      select array_agg(w.id order by w.finished_at, w.id), array_agg(w.finished_at order by w.finished_at, w.id)
        into v_ids, v_finished
        from (
          select r.id, r.finished_at
            from public.edit_requests r
           where r.status in ('succeeded', 'failed', 'canceled')
             and r.inputs_expired_at is null
             and cardinality(r.input_paths) > 0
             and r.finished_at < v_cutoff
             and (r.finished_at, r.id) >= (coalesce(v_next_at, '-infinity'),
                                           coalesce(v_next_id, '00000000-0000-0000-0000-000000000000'))
           order by r.finished_at, r.id
           limit v_chunk + 1
        ) w;
      if cardinality(v_ids) > v_chunk then
        v_next_at := v_finished[v_chunk + 1];  -- where the next chunk (or run) starts
        v_next_id := v_ids[v_chunk + 1];
        v_ids := v_ids[1:v_chunk];
      else
        v_next_at := null;  -- the end: the next run starts over from the oldest
        v_next_id := null;
      end if;
      v_seen := v_seen + coalesce(cardinality(v_ids), 0);

      -- Rows none of whose inputs Storage holds (never uploaded, or gone already) have nothing
      -- to delete: marked here, as edit_retention_mark would after a delete, instead of listing
      -- paths that would fill runs with no-ops (a batch naming a reference never uploaded,
      -- canceled). (Each presence check is one probe of (bucket_id, name) per path: a join on
      -- name = any(...) was planned as a hash on the bucket alone, every object against every row.)
      update public.edit_requests r
         set inputs_expired_at = now()
       where r.id = any (v_ids)
         and r.status in ('succeeded', 'failed', 'canceled') and r.inputs_expired_at is null
         and not exists (select 1 from unnest(r.input_paths) as p(n)
                          where exists (select 1 from storage.objects o
                                         where o.bucket_id = r.input_bucket and o.name = p.n));

      -- Each distinct path of the chunk once, in the order of the first row naming it, so that a
      -- run that fills up can resume at that row knowing every row before it was decided. One
      -- query per chunk, every lookup a probe of its index (offset 0 keeps each one: a plain join
      -- was planned as a scan), the rows naming a path summed up (an aggregate: EXISTS's generic
      -- plan was a seq scan) only for a path Storage holds and no earlier run found blocked.
      for v_path in
        select d.b, d.n, d.first_row, o.written, h.named_until as held_until, a.live, a.last_finish
          from (select r.b, p.n, min(w.ord) as first_row
                  from unnest(v_ids) with ordinality as w(id, ord)
                  cross join lateral (select q.input_bucket as b, q.input_paths as names
                                        from public.edit_requests q
                                       where q.id = w.id and q.inputs_expired_at is null
                                      offset 0) r
                  cross join unnest(r.names) as p(n)
                 where p.n is not null
                 group by r.b, p.n) d
          left join lateral (select coalesce(x.updated_at, x.created_at) as written
                               from storage.objects x
                              where x.bucket_id = d.b and x.name = d.n
                             offset 0) o on true
          left join lateral (select x.named_until
                               from public.edit_retention_held_paths x
                              where x.bucket = d.b and x.path = d.n and x.named_until >= v_cutoff
                             offset 0) h on true
          left join lateral (select bool_or(x.status not in ('succeeded', 'failed', 'canceled')) as live,
                                    max(x.finished_at) as last_finish
                               from public.edit_requests x
                              where o.written is not null and h.named_until is null
                                and x.input_bucket = d.b and x.input_paths @> array[d.n]
                             offset 0) a on true
         order by d.first_row, d.n
      loop
        continue when v_path.written is null;  -- not in Storage: nothing to delete
        continue when v_path.held_until is not null;  -- found blocked by an earlier run, and still so
        v_named := case when v_path.live then now() else v_path.last_finish end;
        if v_named >= v_cutoff then
          insert into public.edit_retention_held_paths as h (bucket, path, named_until)
          values (v_path.b, v_path.n, v_named)
          on conflict on constraint edit_retention_held_paths_pkey do update set named_until = excluded.named_until;
          continue;
        end if;
        continue when v_path.written > v_path.last_finish;
        kind := 'input'; bucket := v_path.b; path := v_path.n;
        return next;
        v_left := v_left - 1;
        if v_left = 0 then
          v_next_at := v_finished[v_path.first_row];  -- rows from here on may hold undecided paths
          v_next_id := v_ids[v_path.first_row];
          exit chunks;
        end if;
      end loop;
      exit chunks when v_next_at is null;
    end loop;

    update public.edit_retention_state s
       set inputs_from_at = v_next_at, inputs_from_id = v_next_id
     where s.id;
    if v_next_at is null then
      -- Starting over: forget the paths whose time is up (they are decided again when met).
      delete from public.edit_retention_held_paths h where h.named_until < v_cutoff;
    end if;
  end if;

  -- Outputs of succeeded requests (never one a live request takes as its input).
  if p_output_age is not null and v_left > 0 then
    v_next_at := null;
    v_next_id := null;
    v_seen := 0;
    for v_row in
      select r.id, r.finished_at, r.output_bucket as b, r.output_path as n
        from public.edit_requests r
       where r.status = 'succeeded' and r.output_expired_at is null and r.output_path is not null
         and r.finished_at < now() - p_output_age
         and (r.finished_at, r.id) >= (coalesce(v_state.outputs_from_at, '-infinity'),
                                       coalesce(v_state.outputs_from_id, '00000000-0000-0000-0000-000000000000'))
       order by r.finished_at, r.id
       limit v_window + 1
    loop
      v_seen := v_seen + 1;
      if v_seen > v_window or v_left = 0 then
        v_next_at := v_row.finished_at;  -- the next run starts here
        v_next_id := v_row.id;
        exit;
      end if;
      select bool_or(l.status in ('awaiting_image', 'queued', 'processing')) into v_blocked
        from public.edit_requests l
       where l.input_bucket = v_row.b and l.input_paths @> array[v_row.n];
      continue when v_blocked;
      kind := 'output'; bucket := v_row.b; path := v_row.n;
      return next;
      v_left := v_left - 1;
    end loop;
    update public.edit_retention_state s
       set outputs_from_at = v_next_at, outputs_from_id = v_next_id
     where s.id;
  end if;

  -- Orphans: input-bucket objects older than the grace that no row needs (no row names them, or
  -- only rows that finished before the object was last written). Every object must be looked
  -- at, so each run scans at most 20 x p_limit of them in name order (bucketid_objname),
  -- resuming where the last run stopped, and starts over at the end of the bucket.
  if p_orphan_grace is not null and v_left > 0 then
    for v_row in
      select o.bucket_id as b, o.name as n, coalesce(o.updated_at, o.created_at) as written
        from storage.objects o
       where o.bucket_id = 'edit-inputs' and o.name > coalesce(v_state.orphans_after, '')
       order by o.name
       limit v_window
    loop
      v_scanned := v_scanned + 1;
      v_last_name := v_row.n;
      continue when v_row.written >= now() - p_orphan_grace;
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
       set orphans_after = case when v_left = 0 or v_scanned = v_window then v_last_name end
     where s.id;
  end if;
end
$$;

comment on function public.edit_retention_candidates(text, interval, interval, interval, integer, integer) is
  'Objects due for deletion (kind input, output or orphan), at most p_limit, from a window of at most '
  '20 x p_limit rows or objects of each kind that resumes where the last call stopped; empty while '
  'another worker holds the retention lease. Delete them through the Storage API, then '
  'edit_retention_mark (rows none of whose inputs Storage holds are marked here).';

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
alter table public.edit_retention_held_paths enable row level security;
revoke all on public.edit_retention_state, public.edit_retention_held_paths from public, anon, authenticated;
grant all on public.edit_retention_state, public.edit_retention_held_paths to service_role;

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
