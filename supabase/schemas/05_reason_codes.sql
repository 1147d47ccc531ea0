-- Reason codes: why a request failed or was refused, for programs and for people.
--
-- processor/domain/rules.py owns the codes (ReasonCode) and their descriptions (REASONS); these two
-- functions are the database's copy. edit_requests.error_code holds one of the codes (CHECK
-- edit_requests_error_code_known, 10_requests.sql) and edit_requests.error_message is generated from
-- it: what the request's owner reads, while the raw error text stays with the service role.
-- tests/test_reason_codes.py and tests/test_what_users_see.py keep both equal to rules.py; readers
-- find the table of codes in docs/reason-codes.md.

create function public.edit_request_reason_codes()
returns text[]
language sql immutable parallel safe
set search_path = ''
as $$
  -- reasons.ReasonCode, in its order; tests/test_reason_codes.py keeps the two equal.
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
    'decode_too_slow',
    'corrupt_image',
    'missing_object',
    'input_never_arrived',
    'unauthorized',
    'not_found',
    'already_finished',
    'idempotency_key_reused',
    'method_not_allowed',
    'body_too_large',
    'too_many_waits',
    'too_many_submissions',
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

-- STRICT: the generated column calls it for every inserted row, most with a null code, which then
-- gives null without a call (a SQL function with `set search_path` is never inlined: each call
-- pushed a GUC level, ~7 µs a row; docs/fair-sharing.md).
create function public.edit_request_reason_message(p_code text)
returns text
language sql immutable strict parallel safe
set search_path = ''
as $$
  -- reasons.REASONS' descriptions (processor/domain/reasons.py); tests/test_what_users_see.py keeps them equal.
  select case p_code
    when 'invalid_input' then 'The request is bad in a way no narrower code names.'
    when 'invalid_request' then 'The body or job input has the wrong shape (not an object, a bad edit id).'
    when 'invalid_parameter' then 'A parameter is out of range or of the wrong type (steps, CFG scales, seed, base, base_color).'
    when 'invalid_prompt' then 'The prompt is blank, or a prompt is longer than the limit or holds a NUL character.'
    when 'invalid_size' then 'The output size breaks the size rule, or an input''s aspect ratio is too extreme.'
    when 'invalid_base64' then 'An image is not valid base64 (or a malformed data: URL).'
    when 'invalid_json' then 'The REST body is not valid JSON.'
    when 'invalid_multipart' then 'The REST multipart body is malformed.'
    when 'too_many_images' then 'More input images than the model takes.'
    when 'empty_image' then 'An input image has 0 bytes.'
    when 'truncated_image' then 'An input image is cut short or corrupt.'
    when 'unknown_format' then 'An input is not PNG, JPEG or WebP.'
    when 'too_many_bytes' then 'An input image is larger than MAX_IMAGE_BYTES.'
    when 'too_many_pixels' then 'An input image has more pixels than MAX_IMAGE_PIXELS.'
    when 'too_small' then 'An input image has a side shorter than MIN_IMAGE_SIDE.'
    when 'animated_image' then 'An input image is animated.'
    when 'too_many_scans' then 'A progressive JPEG has more scans (or scans × pixels) than any real photo needs to decode.'
    when 'decode_too_slow' then 'Decoding an input image took more CPU time than MAX_DECODE_SECONDS allows.'
    when 'corrupt_image' then 'An input image makes the decoder fail in a way no narrower code names.'
    when 'missing_object' then 'An input object named by the request is not in Storage.'
    when 'input_never_arrived' then 'The request waited longer than awaiting_image_ttl for its input images (SQL sweep).'
    when 'unauthorized' then 'Missing, invalid or expired user token.'
    when 'not_found' then 'No such request for this user.'
    when 'already_finished' then 'The request finished before it could be canceled.'
    when 'idempotency_key_reused' then 'The idempotency key was used before for a request with another body.'
    when 'method_not_allowed' then 'The route does not take this HTTP method.'
    when 'body_too_large' then 'The HTTP body is larger than three images at the byte limit need.'
    when 'too_many_waits' then 'The user already holds as many waits and event streams as allowed.'
    when 'too_many_submissions' then 'The user, or the whole process, already has as many submissions being read and checked as allowed.'
    when 'limit_exceeded' then 'The caller is over a limit no narrower code names.'
    when 'quota_exceeded' then 'The user has as many requests in flight, or in the last hour, or as much cost, or as many stored inputs as edit_user_limits allows.'
    when 'transient_error' then 'A fault outside the request that may pass.'
    when 'database_unavailable' then 'The database did not answer.'
    when 'storage_unavailable' then 'Storage did not answer or failed (5xx, timeouts).'
    when 'comfyui_unavailable' then 'ComfyUI did not answer, or its websocket went quiet.'
    when 'comfyui_interrupted' then 'ComfyUI interrupted the run without our asking.'
    when 'lease_expired' then 'The worker stopped answering; requeued, or failed on the last attempt (SQL sweep).'
    when 'model_error' then 'The model failed on this request.'
    when 'out_of_memory' then 'The GPU ran out of memory for this request; not retried: it would again (submit a smaller one).'
    when 'nan_output' then 'The model produced NaN or infinite values; not retried: the same request would again.'
    when 'workflow_error' then 'An external engine''s workflow failed.'
    when 'comfyui_node_error' then 'A ComfyUI node raised, or the workflow produced no image.'
    when 'comfyui_invalid_workflow' then 'ComfyUI refused the workflow or an upload.'
    when 'storage_rejected' then 'Storage refused an upload or download (4xx).'
    when 'canceled' then 'The request was canceled (cancel_edit_request or DELETE).'
    when 'unknown_lora' then 'A LoRA the request names is not on the operator''s allowlist.'
    when 'speed_unavailable' then 'This deployment cannot run the speed preset or LoRAs asked for (engine or settings).'
    when 'lora_unavailable' then 'An allowlisted LoRA could not be loaded (a fault of the deployment).'
    when 'configuration_error' then 'A setting is missing or malformed.'
    when 'setup_failed' then 'The processor could not start working: the model did not load.'
    when 'internal_error' then 'An unexpected error in the processor (a bug).'
    when 'error' then 'Written by fail_edit_request when its caller gave no code (older callers, operators).'
  end
$$;

comment on function public.edit_request_reason_message(text) is
  'The message for users of a reason code (docs/reason-codes.md); null for null. STRICT on purpose: '
  'the generated error_message column calls it for every inserted row (see migration 20261201001300).';

-- Access ------------------------------------------------------------------------------------------
-- Whoever writes a request row evaluates both (a CHECK constraint, a generated column): signed-in
-- users and the service role. As everywhere in these files, a function is closed first (PostgreSQL
-- lets PUBLIC execute a new function, Supabase's default privileges add anon, authenticated and
-- service_role) and then opened to the roles that need it; tests/test_sql_hygiene.py lists them.
revoke all on function public.edit_request_reason_codes(), public.edit_request_reason_message(text)
  from public, anon, authenticated;
grant execute on function public.edit_request_reason_codes(), public.edit_request_reason_message(text)
  to authenticated, service_role;
