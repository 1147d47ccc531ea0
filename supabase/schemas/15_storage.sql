-- Storage: the buckets, who may upload and read what, and readiness (a request waits for its images).
--
-- Inputs: signed-in users write (and, for upserts, read and overwrite) and delete only under
-- `edit-inputs/{their uid}/...`. Outputs are written by the processor (the service role, which
-- bypasses RLS) to `edit-outputs/{user_id}/{request_id}.png` (and a live preview next to it); users
-- read only their folder. supabase/config.toml declares the same buckets for the CLI.
--
-- Space: what each user's folder of edit-inputs holds (objects and bytes) is counted as Storage
-- commits and deletes objects, and a user may store more while they hold less than the
-- max_stored_inputs and max_stored_input_bytes of edit_user_limits (25_fair_sharing_and_limits.sql).
-- Storage asks before the bytes arrive (its permission check), so a user ends at most one object
-- per concurrent upload past a limit; REST and MCP, which upload for the user, ask the same
-- question first (edit_request_admission_check).
--
-- Readiness: a request whose input objects are not all in storage.objects is inserted
-- `awaiting_image` and queued by the trigger below when the last one arrives. An upload and the
-- row's insert may race in two transactions, so both sides take the same advisory lock (one of 64
-- slots per bucket and top folder) before they look: the later one waits and sees the other's
-- committed row. The insert side is edit_requests_before_insert (25_fair_sharing_and_limits.sql);
-- retention's delete guard takes the same slots (50_retention.sql); the sweep re-checks stragglers
-- (20_state_machine.sql).

-- Buckets -----------------------------------------------------------------------------------------
-- Rows, not objects: `on conflict` because the Supabase CLI may have made them from config.toml.
insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values
  ('edit-inputs', 'edit-inputs', false, 20 * 1024 * 1024, array['image/png', 'image/jpeg', 'image/webp']),
  ('edit-outputs', 'edit-outputs', false, 50 * 1024 * 1024, array['image/png', 'image/jpeg', 'image/webp'])
on conflict (id) do nothing;

-- Space per user ------------------------------------------------------------------------------------

create table public.edit_input_usage (
  folder text primary key,  -- the top folder in edit-inputs: a user's id (their uploads must go there)
  objects bigint not null default 0,
  bytes bigint not null default 0
);
comment on table public.edit_input_usage is
  'Objects and bytes each top folder of the edit-inputs bucket holds (a user''s uploads), kept by '
  'triggers on storage.objects; what max_stored_inputs and max_stored_input_bytes bound.';

create function public.edit_object_size(p_metadata jsonb)
returns bigint
language sql immutable parallel safe
set search_path = ''
as $$
  -- Storage's metadata.size, set by its committed write; 0 where a row has none (a permission check).
  select case when jsonb_typeof(p_metadata -> 'size') = 'number'
              then greatest(0, (p_metadata ->> 'size')::numeric)::bigint else 0 end
$$;

create function public.edit_input_usage_count()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- New rows add, old rows subtract (an overwrite or a move is both), per folder in folder order,
  -- so two statements lock the counters they share in the same order. These triggers are named to
  -- run after the readiness ones (triggers run in name order), so every writer of storage.objects
  -- takes the path slots first and the counters second: never the reverse of another's order.
  if tg_op in ('INSERT', 'UPDATE') then
    insert into public.edit_input_usage as u (folder, objects, bytes)
    select split_part(n.name, '/', 1), count(*), sum(public.edit_object_size(n.metadata))
      from new_objects n where n.bucket_id = 'edit-inputs' and n.name is not null
     group by 1 order by 1
    on conflict (folder) do update set objects = u.objects + excluded.objects, bytes = u.bytes + excluded.bytes;
  end if;
  if tg_op in ('UPDATE', 'DELETE') then
    update public.edit_input_usage u
       set objects = u.objects - o.objects, bytes = u.bytes - o.bytes
      from (select split_part(x.name, '/', 1) as folder, count(*) as objects,
                   sum(public.edit_object_size(x.metadata)) as bytes
              from old_objects x where x.bucket_id = 'edit-inputs' and x.name is not null
             group by 1 order by 1) o
     where u.folder = o.folder;
  end if;
  return null;
end
$$;

create trigger edit_stored_inputs_counted_on_insert
  after insert on storage.objects
  referencing new table as new_objects
  for each statement execute function public.edit_input_usage_count();
create trigger edit_stored_inputs_counted_on_update
  after update on storage.objects
  referencing old table as old_objects new table as new_objects
  for each statement execute function public.edit_input_usage_count();
create trigger edit_stored_inputs_counted_on_delete
  after delete on storage.objects
  referencing old table as old_objects
  for each statement execute function public.edit_input_usage_count();

create function public.edit_input_space_refusal()
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_user uuid := auth.uid();
  v_max_objects bigint;
  v_max_bytes bigint;
  v_usage public.edit_input_usage;
begin
  -- Null when the caller may store more inputs; else the limit they are at, with its value, as
  -- edit_request_admission_check's messages name limits. Operators (the
  -- service role) are not limited; a caller that is no user has no folder to write to anyway.
  if v_user is null or public.edit_request_caller_is_operator() then
    return null;
  end if;
  select l.max_stored_inputs, l.max_stored_input_bytes into v_max_objects, v_max_bytes
    from public.edit_user_limits_of(v_user) l;
  select * into v_usage from public.edit_input_usage where folder = v_user::text;
  if v_max_objects is not null and coalesce(v_usage.objects, 0) >= v_max_objects then
    return format('max_stored_inputs (%s)', v_max_objects);
  elsif v_max_bytes is not null and coalesce(v_usage.bytes, 0) >= v_max_bytes then
    return format('max_stored_input_bytes (%s)', v_max_bytes);
  end if;
  return null;
end
$$;
comment on function public.edit_input_space_refusal() is
  'Whether the caller may store more input images: null, or the limit they are at with its value '
  '("max_stored_inputs (10000)", "max_stored_input_bytes (...)", of edit_user_limits). Storage''s '
  'upload policies and edit_request_admission_check ask it.';

-- Policies -----------------------------------------------------------------------------------------

create policy "edit inputs: users upload to their folder" on storage.objects
  for insert to authenticated
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text)
              and (select public.edit_input_space_refusal()) is null);

create policy "edit inputs: users read their folder" on storage.objects
  for select to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

create policy "edit inputs: users overwrite in their folder" on storage.objects
  for update to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text))
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text)
              and (select public.edit_input_space_refusal()) is null);

-- Users free their space, or take their pictures back; a live request's inputs stay
-- (edit_requests_keep_live_inputs, 50_retention.sql, keeps them whoever deletes).
create policy "edit inputs: users delete in their folder" on storage.objects
  for delete to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

create policy "edit outputs: users read their results" on storage.objects
  for select to authenticated
  using (bucket_id = 'edit-outputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

-- Readiness locks ---------------------------------------------------------------------------------

create function public.edit_request_lock_slot(p_bucket text, p_path text)
returns integer
language sql immutable parallel safe
set search_path = ''
as $$
  -- One of 64 slots per (bucket, top folder): uploads and inserts of one user share a slot,
  -- and a transaction never holds more than 64 of these locks, whatever its size.
  select hashtext(p_bucket || '/' || split_part(p_path, '/', 1)) & 63
$$;

create function public.edit_request_lock_slots(p_slots integer[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_slot integer;
begin
  -- An upload and the row's insert can race in two transactions; under READ COMMITTED each
  -- could miss the other. Both take their slots (sorted: no deadlock between two statements)
  -- and then look again, so the later one waits and sees the earlier one's committed rows.
  foreach v_slot in array coalesce(p_slots, '{}') loop
    perform pg_advisory_xact_lock(7051, v_slot);
  end loop;
end
$$;

-- Whether every input is stored (retry_edit_request asks it).
create function public.edit_request_inputs_present(p_bucket text, p_paths text[])
returns boolean
language sql volatile
security definer
set search_path = ''
as $$
  -- Volatile on purpose: called after taking the path locks, it must see rows committed since.
  select not exists (
    select 1 from unnest(p_paths) as p(path)
    where not exists (select 1 from storage.objects o where o.bucket_id = p_bucket and o.name = p.path)
  )
$$;

-- An upload queues the requests it completes -------------------------------------------------------

create function public.edit_requests_on_objects_stored()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Storage commits objects as the service role, so match rows by bucket and name, never by
  -- the caller. Reads storage.objects, never writes it. Once per statement: a 20,000-object
  -- transaction takes at most 64 locks, not 20,000.
  perform public.edit_request_lock_slots(array(
    select distinct public.edit_request_lock_slot(o.bucket_id, o.name)
      from new_objects o where o.bucket_id is not null and o.name is not null
     order by 1));
  -- The rows whose last input this statement stored become queued, each with its place in line
  -- decided now (edit_request_places, 25_fair_sharing_and_limits.sql), not at its insert.
  update public.edit_requests r
     set status = 'queued', fair_tag = p.fair_tag
    from public.edit_request_places(array(
           select w.id from new_objects o
             join public.edit_requests w
               on w.status = 'awaiting_image' and w.input_bucket = o.bucket_id and w.input_paths @> array[o.name]
            where not exists (
                    select 1 from unnest(w.input_paths) as q(path)
                     where q.path <> all (array(select s.name from storage.objects s
                                                 where s.bucket_id = w.input_bucket and s.name = any(w.input_paths)))))) p
   where r.id = p.id and r.status = 'awaiting_image';
  return null;
end
$$;

-- Upserts arrive as updates.
create trigger edit_requests_inputs_stored
  after insert on storage.objects
  referencing new table as new_objects
  for each statement execute function public.edit_requests_on_objects_stored();
create trigger edit_requests_inputs_restored
  after update on storage.objects
  referencing new table as new_objects
  for each statement execute function public.edit_requests_on_objects_stored();

-- The rows an upload may complete: waiting ones that name the object.
create index edit_requests_awaiting_inputs_idx
  on public.edit_requests using gin (input_paths) where status = 'awaiting_image';

-- Access ------------------------------------------------------------------------------------------
-- Users read their own space (an app may show it); only the triggers write it.
alter table public.edit_input_usage enable row level security;
revoke all on public.edit_input_usage from public, anon, authenticated;
grant all on public.edit_input_usage to service_role;
grant select on public.edit_input_usage to authenticated;
create policy "users read their space" on public.edit_input_usage
  for select to authenticated
  using (folder = (select auth.uid()::text));

-- The upload policies ask for the caller's own space; nothing else is the users'.
revoke all on function public.edit_input_space_refusal() from public, anon, authenticated;
grant execute on function public.edit_input_space_refusal() to authenticated, service_role;

-- Called inside the security definer functions and triggers only.
revoke all on function
  public.edit_object_size(jsonb),
  public.edit_input_usage_count(),
  public.edit_request_lock_slot(text, text),
  public.edit_request_lock_slots(integer[]),
  public.edit_request_inputs_present(text, text[]),
  public.edit_requests_on_objects_stored()
  from public, anon, authenticated;
grant execute on function
  public.edit_object_size(jsonb),
  public.edit_input_usage_count(),
  public.edit_request_lock_slot(text, text),
  public.edit_request_lock_slots(integer[]),
  public.edit_request_inputs_present(text, text[]),
  public.edit_requests_on_objects_stored()
  to service_role;
