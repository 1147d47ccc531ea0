-- One source of truth: the schema refuses what the processor refuses, with the same limits.
--
-- processor/domain/rules.py owns every limit; this migration aligns the CHECK constraints
-- with it (tests/test_rule_parity.py sends each boundary value through the row insert and
-- every other way in and expects one verdict and one reason code):
--
--   * a blank prompt (only whitespace) is refused: the engine always failed it (invalid_prompt);
--   * num_inference_steps is 2 to 100 (was 1 to 100): one step always failed (invalid_parameter);
--   * at most 3 input paths, in a constraint of its own, so the refusal names too_many_images;
--   * error_code is one of rules.ReasonCode (or null); public.edit_request_reason_codes() lists them.
--
-- Rows already stored, decided so that every constraint is VALIDATED (a NOT VALID one would
-- still trip any later update of an old row, e.g. `on delete set null` when a user is deleted):
--   * rows still waiting or running that break the new rules (a blank prompt, one step) would
--     fail on their first attempt anyway; they are failed now, with the reason the engine gives;
--   * finished rows are history: the prompt and steps rules hold for rows that are not finished
--     (every new request, and any row an operator retries), so old failed or canceled requests
--     with one step keep their values;
--   * an error_code outside the enumeration (only an operator's hand could write one) becomes
--     'error', the code fail_edit_request writes when none is given; the old code is kept in
--     the error text.
--
-- Re-runnable: every step checks what is already there.

create or replace function public.edit_request_reason_codes()
returns text[]
language sql immutable parallel safe
set search_path = ''
as $$
  -- rules.ReasonCode, in its order; tests/test_reason_codes.py keeps the two equal.
  select array[
    'invalid_input',
    'invalid_request',
    'invalid_parameter',
    'invalid_prompt',
    'invalid_size',
    'invalid_base64',
    'invalid_json',
    'invalid_multipart',
    'too_many_images',
    'empty_image',
    'truncated_image',
    'unknown_format',
    'too_many_bytes',
    'too_many_pixels',
    'too_small',
    'animated_image',
    'too_many_scans',
    'corrupt_image',
    'missing_object',
    'input_never_arrived',
    'unauthorized',
    'not_found',
    'already_finished',
    'body_too_large',
    'too_many_waits',
    'limit_exceeded',
    'quota_exceeded',
    'transient_error',
    'database_unavailable',
    'storage_unavailable',
    'comfyui_unavailable',
    'comfyui_interrupted',
    'lease_expired',
    'model_error',
    'out_of_memory',
    'nan_output',
    'workflow_error',
    'comfyui_node_error',
    'comfyui_invalid_workflow',
    'storage_rejected',
    'canceled',
    'unknown_lora',
    'speed_unavailable',
    'lora_unavailable',
    'configuration_error',
    'setup_failed',
    'internal_error',
    'error'
  ]::text[]
$$;

comment on function public.edit_request_reason_codes() is
  'Every reason code edit_requests.error_code may hold (processor/domain/rules.py ReasonCode; docs/reason-codes.md).';

grant execute on function public.edit_request_reason_codes() to anon, authenticated, service_role;

-- Waiting or running rows the new rules refuse: failed now, as the engine would fail them.
update public.edit_requests r
   set status = 'failed',
       finished_at = now(),
       lease_expires_at = null,
       next_attempt_at = null,
       error = case
         when r.prompt !~ '[^ \t\n\r\f\v]' then 'the prompt is empty (refused by migration 20261201000100)'
         else 'num_inference_steps must be from 2 to 100 (refused by migration 20261201000100)'
       end,
       error_code = case when r.prompt !~ '[^ \t\n\r\f\v]' then 'invalid_prompt' else 'invalid_parameter' end
 where r.status in ('awaiting_image', 'queued', 'processing')
   and (r.prompt !~ '[^ \t\n\r\f\v]' or r.num_inference_steps not between 2 and 100);

update public.edit_requests r
   set error = coalesce(r.error || ' ', '') || '(error_code was ' || r.error_code || ' before migration 20261201000100)',
       error_code = 'error'
 where r.error_code is not null and not r.error_code = any (public.edit_request_reason_codes());

do $$
begin
  -- Steps 2 to 100 for every request that is not finished; edit_requests_steps_range (1 to 100)
  -- keeps holding for all rows.
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_steps_within_rules') then
    alter table public.edit_requests add constraint edit_requests_steps_within_rules
      check (status in ('succeeded', 'failed', 'canceled') or num_inference_steps between 2 and 100);
  end if;
  -- A prompt needs something besides ASCII whitespace (rules.PROMPT_WHITESPACE: the same six
  -- characters in both languages, so no locale decides what counts as blank).
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_prompt_not_blank') then
    alter table public.edit_requests add constraint edit_requests_prompt_not_blank
      check (status in ('succeeded', 'failed', 'canceled') or prompt ~ '[^ \t\n\r\f\v]');
  end if;
  -- At most 3 inputs, named on its own: CHECKs run in name order, so this one (before
  -- edit_requests_input_paths_valid) is the one a fourth path trips, and the refusal reads
  -- too_many_images as in every other way in.
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_input_count') then
    alter table public.edit_requests add constraint edit_requests_input_count
      check (cardinality(input_paths) <= 3);
  end if;
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_error_code_known') then
    alter table public.edit_requests add constraint edit_requests_error_code_known
      check (error_code is null or error_code = any (public.edit_request_reason_codes()));
  end if;
end
$$;
