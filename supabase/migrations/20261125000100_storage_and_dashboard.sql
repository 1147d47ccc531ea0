-- Storage buckets and policies for edit inputs and outputs, and the dashboard view.
--
-- Inputs: authenticated users write (and, for upserts, read and overwrite) only under
-- `edit-inputs/{their uid}/...`. Outputs are written by the processor (service role, which
-- bypasses RLS) to `edit-outputs/{user_id}/{request_id}.png`; users read only their folder.

insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values
  ('edit-inputs', 'edit-inputs', false, 20 * 1024 * 1024, array['image/png', 'image/jpeg', 'image/webp']),
  ('edit-outputs', 'edit-outputs', false, 50 * 1024 * 1024, array['image/png', 'image/jpeg', 'image/webp'])
on conflict (id) do nothing;

drop policy if exists "edit inputs: users upload to their folder" on storage.objects;
create policy "edit inputs: users upload to their folder" on storage.objects
  for insert to authenticated
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

drop policy if exists "edit inputs: users read their folder" on storage.objects;
create policy "edit inputs: users read their folder" on storage.objects
  for select to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

drop policy if exists "edit inputs: users overwrite in their folder" on storage.objects;
create policy "edit inputs: users overwrite in their folder" on storage.objects
  for update to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text))
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

drop policy if exists "edit outputs: users read their results" on storage.objects;
create policy "edit outputs: users read their results" on storage.objects
  for select to authenticated
  using (bucket_id = 'edit-outputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

-- Dashboard: per hour of creation, counts by status, queue wait and processing time
-- percentiles (seconds), and the failure rate among finished requests. security_invoker:
-- users see their own rows only; service_role and postgres see everything.
create or replace view public.edit_requests_hourly
with (security_invoker = true) as
select
  date_trunc('hour', created_at) as hour,
  count(*) as requests,
  count(*) filter (where status = 'awaiting_image') as awaiting_image,
  count(*) filter (where status = 'queued') as queued,
  count(*) filter (where status = 'processing') as processing,
  count(*) filter (where status = 'succeeded') as succeeded,
  count(*) filter (where status = 'failed') as failed,
  count(*) filter (where status = 'canceled') as canceled,
  percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at))
    filter (where started_at is not null) as queue_wait_p50_s,
  percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at))
    filter (where started_at is not null) as queue_wait_p95_s,
  percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at))
    filter (where status = 'succeeded') as processing_p50_s,
  percentile_cont(0.95) within group (order by extract(epoch from finished_at - started_at))
    filter (where status = 'succeeded') as processing_p95_s,
  (count(*) filter (where status = 'failed'))::double precision
    / nullif(count(*) filter (where status in ('succeeded', 'failed')), 0) as failure_rate
from public.edit_requests
group by 1;

comment on view public.edit_requests_hourly is
  'Per-hour edit request counts by status, queue wait and processing time p50/p95 (s), failure rate.';

revoke all on public.edit_requests_hourly from anon, authenticated;
grant select on public.edit_requests_hourly to authenticated, service_role;
