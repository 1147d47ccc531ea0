-- Edit requests: what an app asks for, and what it may see of it.
--
-- Apps upload their images to Storage (15_storage.sql) and insert one row here. The processor moves
-- the row through its states only through the functions of 20_state_machine.sql, every transition
-- conditional on status and owner, so a stale worker can never overwrite a newer owner's work.
-- Clients follow the row through Realtime, dashboards read the history. Reference: docs/contract.md.
--
--   awaiting_image --(last input object stored)--> queued --claim--> processing
--   processing --complete--> succeeded
--   processing --fail(retryable, attempts left)--> queued (next_attempt_at = back-off)
--   processing --fail(permanent or attempts used up)--> failed
--   processing --lease lapsed--> claimable again in claim; requeue_expired: queued or failed
--   processing --release (graceful shutdown)--> queued, the attempt given back
--   awaiting_image | queued | processing --cancel--> canceled
--   failed | canceled --retry (operators)--> queued | awaiting_image
--
-- Each state's invariants are CHECK constraints below: a bad state cannot be stored. The other files
-- add what their subject needs to this table: what an insert goes through (readiness, per-user
-- limits, the fair order: 25_fair_sharing_and_limits.sql), the LoRA allowlist (35_loras.sql),
-- completion webhooks (40_webhooks.sql), batches (45_batches.sql), retention (50_retention.sql) and
-- live previews (55_previews.sql).

-- What a request may hold -------------------------------------------------------------------------
-- The rules its CHECK constraints and its insert policy call. processor/domain/rules.py has the same
-- limits; tests/test_rule_parity.py sends each boundary value through the row insert and every other
-- way in and expects one verdict and one reason code. plpgsql loops over at most three items: cheaper
-- per row than a SQL function over unnest() (one executor start each; docs/fair-sharing.md).

create function public.edit_request_paths_valid(p_paths text[])
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  v_path text;
begin
  -- Object paths as Supabase Storage accepts them, without traversal or absolute paths.
  if p_paths is null or cardinality(p_paths) > 3 then
    return false;
  end if;
  foreach v_path in array p_paths loop
    if v_path is null
       or char_length(v_path) not between 1 and 1024
       or v_path like '/%'
       or v_path like '%//%'
       or v_path ~ '(^|/)\.\.?(/|$)' then
      return false;
    end if;
  end loop;
  return true;
end
$$;

create function public.edit_request_paths_owned(p_paths text[], p_user uuid)
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  v_path text;
  v_owner text := p_user::text;
begin
  -- Every path lies under the caller's own top folder (a null path is refused by the path CHECK).
  if p_user is null then
    return false;
  end if;
  foreach v_path in array coalesce(p_paths, '{}') loop
    if split_part(v_path, '/', 1) <> v_owner then
      return false;
    end if;
  end loop;
  return true;
end
$$;

-- Shape only (no table access, so usable in a CHECK): an array of at most 3 objects with a valid
-- "name", an optional numeric "scale" in [-4, 4], no other keys, no name twice. Whether a name is
-- allowed is the LoRA allowlist's trigger (35_loras.sql).
create function public.edit_request_loras_valid(p_loras jsonb)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_item jsonb;
  v_names text[] := '{}';
begin
  if p_loras is null or jsonb_typeof(p_loras) <> 'array' or jsonb_array_length(p_loras) > 3 then
    return false;
  end if;
  for v_item in select e.item from jsonb_array_elements(p_loras) as e(item) loop
    if jsonb_typeof(v_item) <> 'object'
       or jsonb_typeof(v_item -> 'name') is distinct from 'string'
       or (v_item ->> 'name') !~ '^[a-z0-9][a-z0-9_.-]{0,63}$'
       or (v_item ->> 'name') = any (v_names)
       or exists (select 1 from jsonb_object_keys(v_item) as k(key) where k.key not in ('name', 'scale')) then
      return false;
    end if;
    if v_item ? 'scale' and jsonb_typeof(v_item -> 'scale') <> 'null' then
      if jsonb_typeof(v_item -> 'scale') <> 'number' or (v_item ->> 'scale')::numeric not between -4 and 4 then
        return false;
      end if;
    end if;
    v_names := v_names || (v_item ->> 'name');
  end loop;
  return true;
end
$$;

-- The table ---------------------------------------------------------------------------------------
-- Columns are in the order the migrations added them: a new column is appended, never inserted
-- (`select *`, the claim's `returning r.*` and Realtime records follow this order).

create table public.edit_requests (
  id uuid primary key default gen_random_uuid(),
  user_id uuid default auth.uid() references auth.users (id) on delete set null,
  -- Decided at insert from what Storage holds (edit_requests_before_insert); users cannot name it.
  status text not null default 'queued',
  -- The edit: what to do, to which images (object paths under the owner's folder), with what.
  prompt text not null,
  negative_prompt text not null default ' ',
  input_bucket text not null default 'edit-inputs',
  input_paths text[] not null,
  output_bucket text not null default 'edit-outputs',
  output_path text,
  num_inference_steps integer not null default 40,
  true_cfg_scale real not null default 4.0,
  guidance_scale real not null default 1.0,
  seed bigint,
  -- The processor's bookkeeping: progress, attempts (counted at claim), back-off, owner and lease.
  progress real not null default 0,
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  next_attempt_at timestamptz,
  claimed_by text,
  lease_expires_at timestamptz,
  -- The outcome: the raw error (service role only), its reason code, what ran (seed, size, timings).
  error text,
  error_code text,
  result jsonb,
  priority smallint not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  -- A request with no input image creates one at this size, from a canvas (`base`).
  width integer,
  height integer,
  base text not null default 'blank',
  base_color text not null default '#ffffff',
  -- Speed preset and LoRAs (docs/speed.md).
  speed text,
  loras jsonb not null default '[]'::jsonb,
  -- Place in the fair claim order (25_fair_sharing_and_limits.sql).
  fair_tag timestamptz not null default now(),
  error_message text generated always as (public.edit_request_reason_message(error_code)) stored,
  -- Its foreign key is in 40_webhooks.sql (edit_webhook_endpoints comes later).
  webhook_endpoint_id uuid,
  -- Its foreign key is in 45_batches.sql.
  batch_id uuid,
  -- Set by retention (50_retention.sql) and live previews (55_previews.sql).
  inputs_expired_at timestamptz,
  output_expired_at timestamptz,
  preview_path text,
  preview_step integer,
  -- What the request was charged against its owner's max_cost_per_hour (25_fair_sharing_and_limits.sql).
  cost double precision,
  -- How the result is encoded; null: the deployment's OUTPUT_FORMAT / OUTPUT_QUALITY
  -- (20261206005000_output_formats.sql). What was used is in result.
  output_format text,
  output_quality integer,

  constraint edit_requests_status_known
    check (status in ('awaiting_image', 'queued', 'processing', 'succeeded', 'failed', 'canceled')),
  -- Prompts are bounded in what the tokenizer sees (rules.MAX_PROMPT_BYTES): UTF-8 bytes of their
  -- NFC form, at most one token each, whatever the script; finished rows are history (before issue
  -- 22 the bound was 2,000 characters, up to five tokens each).
  constraint edit_requests_prompt_length check (
    char_length(prompt) >= 1
    and (status in ('succeeded', 'failed', 'canceled') or octet_length(normalize(prompt, NFC)) <= 2000)
  ),
  -- A prompt needs something besides ASCII whitespace (rules.PROMPT_WHITESPACE: the same six
  -- characters in both languages, so no locale decides what counts as blank). Finished rows are
  -- history: the rule holds for every row that is not finished (every new request, and any row an
  -- operator retries); so does steps_within_rules (2 to 100), while steps_range holds for all rows.
  constraint edit_requests_prompt_not_blank
    check (status in ('succeeded', 'failed', 'canceled') or prompt ~ '[^ \t\n\r\f\v]'),
  constraint edit_requests_negative_prompt_length check (
    status in ('succeeded', 'failed', 'canceled') or octet_length(normalize(negative_prompt, NFC)) <= 2000
  ),
  -- CHECKs run in name order: input_count comes before input_paths_valid, so a fourth path trips
  -- it and the refusal reads too_many_images, as in every other way in.
  constraint edit_requests_input_count check (cardinality(input_paths) <= 3),
  constraint edit_requests_input_paths_valid check (public.edit_request_paths_valid(input_paths)),
  -- Nothing to edit and no size to create at is a request no one can fulfil.
  constraint edit_requests_inputs_or_size check (cardinality(input_paths) > 0 or width is not null),
  constraint edit_requests_size_valid check (
    (width is null and height is null)
    -- Spelled out: a check that is NULL passes, so `height between ...` alone would let a
    -- width without a height through.
    or (width is not null and height is not null
        and width between 32 and 4096 and height between 32 and 4096
        and width % 16 = 0 and height % 16 = 0
        and width::bigint * height <= 4194304)
  ),
  constraint edit_requests_base_known check (base in ('blank', 'noise')),
  constraint edit_requests_base_color_hex check (base_color ~ '^#[0-9A-Fa-f]{6}$'),
  constraint edit_requests_steps_range check (num_inference_steps between 1 and 100),
  constraint edit_requests_steps_within_rules
    check (status in ('succeeded', 'failed', 'canceled') or num_inference_steps between 2 and 100),
  constraint edit_requests_true_cfg_range check (true_cfg_scale between 0 and 20),
  constraint edit_requests_guidance_range check (guidance_scale between 0 and 20),
  constraint edit_requests_seed_range check (seed between 0 and 9223372036854775807),
  constraint edit_requests_speed_valid check (speed is null or speed in ('quality', 'fast', 'fastest')),
  -- The default '[]' short-circuits the plpgsql loop (~2 µs a row).
  constraint edit_requests_loras_valid check (loras = '[]'::jsonb or public.edit_request_loras_valid(loras)),
  -- rules.OUTPUT_FORMATS and MIN/MAX_OUTPUT_QUALITY (tests/test_rule_parity.py).
  constraint edit_requests_output_format_known
    check (output_format is null or output_format in ('png', 'webp', 'jpeg')),
  constraint edit_requests_output_quality_range check (output_quality is null or output_quality between 1 and 100),
  constraint edit_requests_progress_range check (progress between 0 and 1),
  constraint edit_requests_attempts_range check (attempts between 0 and max_attempts),
  constraint edit_requests_max_attempts_range check (max_attempts between 1 and 20),
  constraint edit_requests_priority_range check (priority between -100 and 100),
  constraint edit_requests_error_code_known
    check (error_code is null or error_code = any (public.edit_request_reason_codes())),
  -- rules.MAX_STEPS bounds the step, as edit_requests_steps_range bounds num_inference_steps
  -- (tests/test_previews.py keeps them equal).
  constraint edit_requests_preview_step_range check (preview_step is null or preview_step between 1 and 100),
  constraint edit_requests_preview_together check ((preview_path is null) = (preview_step is null)),
  -- Bad states are impossible, not merely unlikely:
  constraint edit_requests_processing_is_owned
    check (status <> 'processing' or (claimed_by is not null and lease_expires_at is not null and started_at is not null)),
  constraint edit_requests_waiting_is_unowned
    check (status not in ('awaiting_image', 'queued') or (lease_expires_at is null and finished_at is null)),
  constraint edit_requests_succeeded_has_output
    check (status <> 'succeeded' or (output_path is not null and finished_at is not null and progress = 1)),
  constraint edit_requests_failed_has_reason
    check (status <> 'failed' or (error is not null and finished_at is not null)),
  constraint edit_requests_canceled_is_finished check (status <> 'canceled' or finished_at is not null),
  constraint edit_requests_only_success_has_output check (output_path is null or status = 'succeeded'),
  -- Idempotent submits (docs/contract.md): a retry that names the key of an earlier request of the
  -- same user is that request, never a second one (the unique index below; PostgREST answers 409).
  -- The fingerprint is a hash of the body the REST API and MCP made the request from, so a key sent
  -- again with another body is refused there (idempotency_key_reused); an app that inserts rows
  -- itself may leave it null. rules.IDEMPOTENCY_KEY_MAX_CHARS / _PATTERN bound the key.
  idempotency_key text,
  idempotency_fingerprint text,
  constraint edit_requests_idempotency_key_valid
    check (char_length(idempotency_key) <= 255 and idempotency_key ~ '^[\x21-\x7E]+$'),
  constraint edit_requests_idempotency_fingerprint_length check (char_length(idempotency_fingerprint) <= 100)
);

comment on table public.edit_requests is
  'Image edit requests for Qwen-Image-Edit-2509. Apps insert; the processor moves them through '
  'claim_edit_request / heartbeat / complete / fail / release; clients watch via Realtime.';
comment on column public.edit_requests.width is
  'Output width in pixels (multiple of 16, 32 to 4096, with height at most 4 MP); null: the model''s rule.';
comment on column public.edit_requests.height is 'Output height in pixels; given with width, or both null.';
comment on column public.edit_requests.base is
  'The canvas a request without input images starts from: blank (base_color) or noise (from the seed).';
comment on column public.edit_requests.base_color is 'Colour of a blank canvas, #rrggbb.';
comment on column public.edit_requests.speed is
  'quality (40 steps, true CFG) | fast (Lightning 8 steps, CFG off) | fastest (Lightning 4 steps); null: the deployment default. What ran is in result.speed.';
comment on column public.edit_requests.loras is
  'Up to 3 allowlisted LoRAs (public.edit_loras) as [{"name", "scale"}]; scale null: the operator default. What ran is in result.loras.';
comment on column public.edit_requests.fair_tag is
  'Place in the claim order after priority: the time the request became queued (at insert, or when '
  'its last image arrived) + fair_share_quantum x the requests its owner already had queued or '
  'processing then. Kept by retries; while awaiting_image it is only created_at.';
comment on column public.edit_requests.error_message is
  'For the request''s owner: what its error_code means. The raw error text stays in `error` (service_role only).';
comment on column public.edit_requests.webhook_endpoint_id is
  'One of the owner''s webhook endpoints: told when the request succeeds, fails or is canceled.';
comment on column public.edit_requests.batch_id is 'The edit_batches row that made this request; null for a single edit.';
comment on column public.edit_requests.inputs_expired_at is
  'When retention found every input object of this finished request gone from Storage (null: kept).';
comment on column public.edit_requests.output_expired_at is
  'When retention deleted this request''s output object; output_path is kept as history.';
comment on column public.edit_requests.preview_path is
  'Object (in output_bucket) holding the latest live preview of a running edit; null before the first.';
comment on column public.edit_requests.preview_step is
  'The denoising step the preview at preview_path shows (1-based); goes up within one attempt.';
comment on column public.edit_requests.cost is
  'What the request was charged against max_cost_per_hour, in default steps (edit_request_cost: the '
  'transformer work of its steps over the output and every input; a default edit is about 40). Set at '
  'insert; null for rows inserted before costs were recorded.';
comment on column public.edit_requests.output_format is
  'png | webp | jpeg: the output object is {id}.png, .webp or .jpg; null: the deployment default (OUTPUT_FORMAT). What was used is in result.output_format.';
comment on column public.edit_requests.output_quality is
  'WebP and JPEG quality, 1 to 100 (PNG ignores it); null: the deployment default (OUTPUT_QUALITY). What was used is in result.output_quality.';
comment on column public.edit_requests.idempotency_key is
  'The client''s key for safe retries (Idempotency-Key): unique per user; a retry with it gets this request.';
comment on column public.edit_requests.idempotency_fingerprint is
  'A hash of the body the REST API or MCP made this request from; another body with the same key is refused.';

-- Users' lists and dashboards. (The claim's, the sweep's and each subject's own indexes are in
-- their files.)
create index edit_requests_user_idx on public.edit_requests (user_id, created_at desc);
create index edit_requests_created_idx on public.edit_requests (created_at);
-- Partial: requests without a key (most) cost no entry. Apps find a request again by its key.
create unique index edit_requests_idempotency_key_unique
  on public.edit_requests (user_id, idempotency_key) where idempotency_key is not null;

-- Bookkeeping -------------------------------------------------------------------------------------

create function public.edit_requests_touch()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- `updated_at` is the time of the last change a client can see: a heartbeat that only
  -- renews the lease says so (a transaction-local flag) and leaves it. Deliberately no
  -- look at the whole NEW row here: reading it as a composite would detoast long values
  -- and write them into the WAL again on every update.
  if coalesce(current_setting('edit_requests.lease_only', true), '') <> 'on' then
    new.updated_at := now();
  end if;
  return new;
end
$$;

create trigger edit_requests_touch
  before update on public.edit_requests
  for each row execute function public.edit_requests_touch();

-- Realtime ----------------------------------------------------------------------------------------
-- Clients watching their rows see every status and progress change. UPDATE events carry the whole
-- row: with the default replica identity a value stored out of line (TOAST: a 2,000-character CJK
-- prompt is 6 KB) is not in the WAL of an UPDATE that leaves it unchanged, so progress events
-- lacked `prompt`; REPLICA IDENTITY FULL logs the old row in full (cost: docs/supabase-fidelity.md).

alter table public.edit_requests replica identity full;
alter publication supabase_realtime add table public.edit_requests;

-- Access ------------------------------------------------------------------------------------------
-- Users insert and read only their own rows, and name only the request's content: state and
-- bookkeeping are the processor's. What they may read leaves out the processor's bookkeeping (which
-- worker holds the row, its lease, attempts, back-off, priority) and the raw error text: PostgREST
-- exposes every grant and Realtime sends every column the subscriber's role may select. So clients
-- name the columns they read (`select('*')` is refused). anon gets nothing. The service role (the
-- processor, operators, dashboards) reads and writes everything.

alter table public.edit_requests enable row level security;

create policy "users read their own edit requests" on public.edit_requests
  for select to authenticated
  using (user_id = (select auth.uid()));

create policy "users create their own edit requests" on public.edit_requests
  for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and public.edit_request_paths_owned(input_paths, (select auth.uid()))
  );

-- Supabase grants the API roles everything on public tables by default: take back what they must
-- not have.
revoke all on public.edit_requests from anon, authenticated;
grant all on public.edit_requests to service_role;
grant select (
  id, user_id, status, progress, prompt, negative_prompt, num_inference_steps, true_cfg_scale,
  guidance_scale, seed, input_bucket, input_paths, output_bucket, output_path, error_code,
  error_message, result, created_at, started_at, finished_at, updated_at, width, height, base,
  base_color, speed, loras, webhook_endpoint_id, batch_id, inputs_expired_at, output_expired_at,
  preview_path, preview_step, cost, output_format, output_quality, idempotency_key, idempotency_fingerprint
) on public.edit_requests to authenticated;
-- batch_id only of a batch of their own (a policy in 45_batches.sql), webhook_endpoint_id only of an
-- endpoint of their own (a trigger in 40_webhooks.sql). Not `id`: ids are the server's (random, from
-- the column default). A user who could name one would learn from a duplicate-key error that a row
-- with that id exists, whoever owns it; naming it is refused (permission denied) whether or not it
-- exists. The service role may still name ids (operators' imports and restores).
grant insert (
  user_id, prompt, negative_prompt, input_paths, num_inference_steps, true_cfg_scale,
  guidance_scale, seed, width, height, base, base_color, speed, loras, webhook_endpoint_id, batch_id,
  output_format, output_quality, idempotency_key, idempotency_fingerprint
) on public.edit_requests to authenticated;

-- The path rules run in users' inserts (a CHECK constraint, the insert policy); trigger functions
-- run for whoever fires them and are called by nobody.
revoke all on function
  public.edit_request_paths_valid(text[]),
  public.edit_request_paths_owned(text[], uuid),
  public.edit_request_loras_valid(jsonb),
  public.edit_requests_touch()
  from public, anon, authenticated;
grant execute on function
  public.edit_request_paths_valid(text[]),
  public.edit_request_paths_owned(text[], uuid),
  public.edit_request_loras_valid(jsonb),
  public.edit_requests_touch()
  to service_role;
grant execute on function
  public.edit_request_paths_valid(text[]),
  public.edit_request_paths_owned(text[], uuid),
  public.edit_request_loras_valid(jsonb)
  to authenticated;

-- Dashboard ---------------------------------------------------------------------------------------
-- Per hour of creation: counts by status, queue wait and processing time percentiles (seconds), and
-- the failure rate among finished requests. security_invoker: users see their own rows only;
-- service_role and postgres see everything.

create view public.edit_requests_hourly
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
