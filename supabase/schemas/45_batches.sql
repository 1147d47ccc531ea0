-- Batches: the same edit over many images (docs/batches.md).
--
--  * public.edit_batches: one row an app inserts (owner, prompt and the parameters of an edit,
--    input_paths: the images, each making one request, and reference_paths: up to 2 extra images
--    every request also gets). Its AFTER INSERT trigger inserts one edit_requests row per image
--    under the batch's id, in the same statement and as the same caller (security invoker), so
--    every rule of edit_requests holds for each: its CHECK constraints (a rule exists once, and a
--    refusal names the edit_requests constraint, so the reason codes are the usual ones), RLS (the
--    path ownership check), the LoRA allowlist and the per-user limits (SQLSTATE PT429). A batch
--    that breaks any of them is refused whole: nothing is half-created.
--  * Parameters the batch leaves null take edit_requests' own defaults (the trigger names only the
--    columns the batch set), so no default is written twice either.
--  * edit_requests.batch_id (nullable, indexed, selectable by owners); each request is claimed,
--    retried and canceled on its own, as any other.
--  * public.edit_batch_progress (security_invoker): counts by status, finished, progress.
--  * public.cancel_edit_batch(id): cancel_edit_request on every request of the batch not finished;
--    the count. Owners, or operators (by role), as cancel_edit_request decides.
--
-- The batch size bound is rules.MAX_BATCH_SIZE (processor/domain/rules.py); tests/test_rule_parity.py
-- sends its boundary through every way in.

create table public.edit_batches (
  id uuid primary key default gen_random_uuid(),
  user_id uuid default auth.uid() references auth.users (id) on delete set null,
  prompt text not null,
  -- Null: edit_requests' default. Ranges are edit_requests' CHECKs, met by every request.
  negative_prompt text,
  num_inference_steps integer,
  true_cfg_scale real,
  guidance_scale real,
  seed bigint,
  width integer,
  height integer,
  base text,
  base_color text,
  speed text,
  loras jsonb,
  input_paths text[] not null,
  reference_paths text[] not null default '{}',
  created_at timestamptz not null default now(),
  output_format text,
  output_quality integer,
  -- CHECKs run in name order: an empty list trips _not_empty, a long one _size.
  constraint edit_batches_not_empty check (cardinality(input_paths) >= 1),
  constraint edit_batches_size check (cardinality(input_paths) <= 50),
  -- Idempotent submits, as edit_requests' (10_requests.sql): the key is the batch's; its requests
  -- hold none.
  idempotency_key text,
  idempotency_fingerprint text,
  constraint edit_batches_idempotency_key_valid
    check (char_length(idempotency_key) <= 255 and idempotency_key ~ '^[\x21-\x7E]+$'),
  constraint edit_batches_idempotency_fingerprint_length check (char_length(idempotency_fingerprint) <= 100)
);

comment on table public.edit_batches is
  'The same edit over many images: one edit_requests row per input_paths entry (each with the '
  'reference_paths after it), made by the insert trigger under the same rules and limits. docs/batches.md.';

create index edit_batches_user_idx on public.edit_batches (user_id, created_at desc);
create unique index edit_batches_idempotency_key_unique
  on public.edit_batches (user_id, idempotency_key) where idempotency_key is not null;

alter table public.edit_requests
  add constraint edit_requests_batch_id_fkey foreign key (batch_id)
  references public.edit_batches (id) on delete set null;
create index edit_requests_batch_idx on public.edit_requests (batch_id) where batch_id is not null;

-- Fan-out -----------------------------------------------------------------------------------------

create function public.edit_batches_fan_out()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  -- Security invoker on purpose: the requests are inserted as the caller, so RLS, column grants,
  -- the LoRA allowlist and the per-user limits apply to them exactly as to a single insert.
  v_batch jsonb := to_jsonb(new);
  v_names text;
  v_values text;
begin
  select string_agg(format('%I', c.name), ', ' order by c.ord),
         string_agg(format('p.%I', c.name), ', ' order by c.ord)
    into v_names, v_values
    from unnest(array['negative_prompt', 'num_inference_steps', 'true_cfg_scale', 'guidance_scale', 'seed',
                      'width', 'height', 'base', 'base_color', 'speed', 'loras', 'output_format',
                      'output_quality']) with ordinality as c(name, ord)
   where jsonb_typeof(v_batch -> c.name) is distinct from 'null';
  execute format(
    'insert into public.edit_requests (user_id, batch_id, prompt, input_paths%s) '
    'select $1, $2, p.prompt, array[i.path] || $3%s '
    '  from jsonb_populate_record(null::public.edit_requests, $4) p, '
    '       unnest($5) with ordinality as i(path, n) '
    ' order by i.n',
    coalesce(', ' || v_names, ''), coalesce(', ' || v_values, ''))
  using new.user_id, new.id, new.reference_paths, v_batch, new.input_paths;
  return null;
end
$$;

create trigger edit_batches_fan_out
  after insert on public.edit_batches
  for each row execute function public.edit_batches_fan_out();

-- Progress ----------------------------------------------------------------------------------------

create view public.edit_batch_progress with (security_invoker = true) as
select b.id,
       b.user_id,
       b.prompt,
       b.created_at,
       count(r.id)::integer as requests,
       (count(r.id) filter (where r.status = 'awaiting_image'))::integer as awaiting_image,
       (count(r.id) filter (where r.status = 'queued'))::integer as queued,
       (count(r.id) filter (where r.status = 'processing'))::integer as processing,
       (count(r.id) filter (where r.status = 'succeeded'))::integer as succeeded,
       (count(r.id) filter (where r.status = 'failed'))::integer as failed,
       (count(r.id) filter (where r.status = 'canceled'))::integer as canceled,
       (count(r.id) filter (where r.status in ('succeeded', 'failed', 'canceled')))::integer as finished,
       -- A finished request counts as done whatever its last progress, so the batch is at 1
       -- exactly when every request has finished.
       coalesce(avg(case when r.status in ('succeeded', 'failed', 'canceled') then 1 else r.progress end), 0)
         ::double precision as progress,
       max(r.finished_at) as last_finished_at
  from public.edit_batches b
  left join public.edit_requests r on r.batch_id = b.id
 group by b.id;

comment on view public.edit_batch_progress is
  'Per batch: requests by status, finished (succeeded + failed + canceled) and progress (the mean of '
  'the requests'' progress, finished ones counting 1). Security invoker: users see their own batches.';

-- Cancel ------------------------------------------------------------------------------------------

create function public.cancel_edit_batch(p_id uuid)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  -- Security invoker: the caller finds only the requests RLS lets them read (their own; all for
  -- operators), and cancel_edit_request decides each transition as it always does.
  v_id uuid;
  v_canceled integer := 0;
begin
  for v_id in
    select r.id from public.edit_requests r
     where r.batch_id = p_id and r.status in ('awaiting_image', 'queued', 'processing')
     order by r.id  -- one lock order for every caller
  loop
    if public.cancel_edit_request(v_id) then
      v_canceled := v_canceled + 1;
    end if;
  end loop;
  return v_canceled;
end
$$;

comment on function public.cancel_edit_batch(uuid) is
  'Cancel every request of the batch that has not finished (cancel_edit_request''s rules); returns how many.';

-- Access ------------------------------------------------------------------------------------------

alter table public.edit_batches enable row level security;
revoke all on public.edit_batches from public, anon, authenticated;
grant all on public.edit_batches to service_role;
grant select on public.edit_batches to authenticated;
-- Not `id`: the server's, as edit_requests' (10_requests.sql).
grant insert (user_id, prompt, negative_prompt, num_inference_steps, true_cfg_scale, guidance_scale, seed,
              width, height, base, base_color, speed, loras, input_paths, reference_paths, output_format,
              output_quality, idempotency_key, idempotency_fingerprint)
  on public.edit_batches to authenticated;

create policy "users read their own batches" on public.edit_batches
  for select to authenticated
  using (user_id = (select auth.uid()));
-- Paths are checked where they are used: each request's insert meets edit_requests' policy
-- (edit_request_paths_owned), whose refusal fails the whole batch.
create policy "users create their own batches" on public.edit_batches
  for insert to authenticated
  with check (user_id = (select auth.uid()));

-- Users may name batch_id (the fan-out inserts as them), but only a batch of their own.
create policy "users file requests only under their own batches" on public.edit_requests
  as restrictive for insert to authenticated
  with check (
    batch_id is null
    or exists (select 1 from public.edit_batches b where b.id = batch_id and b.user_id = (select auth.uid()))
  );

revoke all on public.edit_batch_progress from public, anon, authenticated;
grant select on public.edit_batch_progress to authenticated, service_role;

revoke all on function public.edit_batches_fan_out(), public.cancel_edit_batch(uuid) from public, anon, authenticated;
grant execute on function public.edit_batches_fan_out(), public.cancel_edit_batch(uuid) to service_role;
grant execute on function public.cancel_edit_batch(uuid) to authenticated;
