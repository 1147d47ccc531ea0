-- Storage: the buckets, who may upload and read what, and readiness (a request waits for its images).
--
-- Inputs: signed-in users write (and, for upserts, read and overwrite) only under
-- `edit-inputs/{their uid}/...`. Outputs are written by the processor (the service role, which
-- bypasses RLS) to `edit-outputs/{user_id}/{request_id}.png` (and a live preview next to it); users
-- read only their folder. supabase/config.toml declares the same buckets for the CLI.
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

create policy "edit inputs: users upload to their folder" on storage.objects
  for insert to authenticated
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

create policy "edit inputs: users read their folder" on storage.objects
  for select to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

create policy "edit inputs: users overwrite in their folder" on storage.objects
  for update to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text))
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

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
-- Called inside the security definer functions and triggers only.
revoke all on function
  public.edit_request_lock_slot(text, text),
  public.edit_request_lock_slots(integer[]),
  public.edit_request_inputs_present(text, text[]),
  public.edit_requests_on_objects_stored()
  from public, anon, authenticated;
grant execute on function
  public.edit_request_lock_slot(text, text),
  public.edit_request_lock_slots(integer[]),
  public.edit_request_inputs_present(text, text[]),
  public.edit_requests_on_objects_stored()
  to service_role;
