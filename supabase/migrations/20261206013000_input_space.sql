-- Space per user in edit-inputs: a signed-in user could upload objects straight to Storage without
-- bound (each within the bucket's file_size_limit, any number of them), held until the orphan
-- clean-up. edit_input_usage counts what each user's folder holds (triggers on storage.objects), the
-- upload policies let a user store more only while under max_stored_inputs and
-- max_stored_input_bytes (new columns of edit_user_limits; default 10,000 objects and 10 GiB), and
-- edit_request_admission_check asks the same for the REST API and MCP, which upload for the user.
-- Users may now delete in their folder (a live request's inputs stay).
-- Existing objects are counted once here. quota_exceeded's message names the new limits.

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
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
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
  select coalesce(u.max_stored_inputs, d.max_stored_inputs), coalesce(u.max_stored_input_bytes, d.max_stored_input_bytes)
    into v_max_objects, v_max_bytes
    from (select 1) one
    left join public.edit_user_limits d on d.user_id = v_zero
    left join public.edit_user_limits u on u.user_id = v_user;
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

-- What is stored already.
insert into public.edit_input_usage (folder, objects, bytes)
select split_part(o.name, '/', 1), count(*), sum(public.edit_object_size(o.metadata))
  from storage.objects o where o.bucket_id = 'edit-inputs' and o.name is not null
 group by 1;

alter table public.edit_user_limits
  add column max_stored_inputs bigint check (max_stored_inputs >= 0),
  add column max_stored_input_bytes bigint check (max_stored_input_bytes >= 0);
update public.edit_user_limits
   set max_stored_inputs = 10000, max_stored_input_bytes = 10 * 1024 * 1024 * 1024::bigint
 where user_id = '00000000-0000-0000-0000-000000000000';
comment on table public.edit_user_limits is
  'Per-user limits checked at insert (service_role and postgres are exempt). user_id '
  '00000000-0000-0000-0000-000000000000 is the default for everyone; other rows override it '
  'column by column. Cost is edit_request_cost (the transformer work of the steps over the output '
  'and every input; a default edit costs about 40); each row''s charge is in edit_requests.cost. '
  'max_stored_inputs and max_stored_input_bytes bound what the user holds in edit-inputs: checked '
  'when they upload (Storage) or submit through the REST API or MCP, not at insert.';

drop policy "edit inputs: users upload to their folder" on storage.objects;
create policy "edit inputs: users upload to their folder" on storage.objects
  for insert to authenticated
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text)
              and (select public.edit_input_space_refusal()) is null);

drop policy "edit inputs: users overwrite in their folder" on storage.objects;
create policy "edit inputs: users overwrite in their folder" on storage.objects
  for update to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text))
  with check (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text)
              and (select public.edit_input_space_refusal()) is null);

-- Users free their space, or take their pictures back; a live request's inputs stay
-- (edit_requests_keep_live_inputs keeps them whoever deletes).
create policy "edit inputs: users delete in their folder" on storage.objects
  for delete to authenticated
  using (bucket_id = 'edit-inputs' and (storage.foldername(name))[1] = (select auth.uid()::text));

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
revoke all on function public.edit_object_size(jsonb), public.edit_input_usage_count()
  from public, anon, authenticated;
grant execute on function public.edit_object_size(jsonb), public.edit_input_usage_count() to service_role;

create or replace function public.edit_request_admission_check(
  p_requests integer,
  p_steps integer,
  p_true_cfg_scale real,
  p_speed text,
  p_width integer,
  p_height integer,
  p_inputs integer,
  p_prompt_chars integer,
  p_negative_chars integer,
  p_loras integer
)
returns table (refused text, message text)
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_user uuid := auth.uid();
  v_hour timestamptz := date_trunc('hour', now());
  v_gone double precision := extract(epoch from now() - date_trunc('hour', now())) / 3600;
  v_max_in_flight integer;
  v_max_requests integer;
  v_max_cost double precision;
  v_usage public.edit_user_usage;
  v_requests double precision := 0;
  v_cost double precision := 0;
  v_in_flight integer;
  v_row_cost double precision;
  v_space text;
begin
  if public.edit_request_caller_is_operator() then
    return query select null::text, null::text;
    return;
  end if;
  if v_user is null or not exists (select 1 from auth.users u where u.id = v_user) then
    return query select 'no_such_user'::text, 'the caller is no user of this project'::text;
    return;
  end if;
  select coalesce(u.max_in_flight, d.max_in_flight),
         coalesce(u.max_requests_per_hour, d.max_requests_per_hour),
         coalesce(u.max_cost_per_hour, d.max_cost_per_hour)
    into v_max_in_flight, v_max_requests, v_max_cost
    from (select 1) one
    left join public.edit_user_limits d on d.user_id = v_zero
    left join public.edit_user_limits u on u.user_id = v_user;
  select * into v_usage from public.edit_user_usage where user_id = v_user;
  if v_usage.hour_start = v_hour then
    v_requests := v_usage.previous_hour_requests * (1 - v_gone) + v_usage.hour_requests;
    v_cost := v_usage.previous_hour_cost * (1 - v_gone) + v_usage.hour_cost;
  elsif v_usage.hour_start = v_hour - interval '1 hour' then
    v_requests := v_usage.hour_requests * (1 - v_gone);
    v_cost := v_usage.hour_cost * (1 - v_gone);
  end if;
  select count(*) into v_in_flight from (
    select 1 from public.edit_requests r
     where r.user_id = v_user and r.status in ('awaiting_image', 'queued', 'processing')
     limit coalesce(v_max_in_flight + 1, 0)
  ) s;
  select public.edit_request_cost(p_steps, p_true_cfg_scale, coalesce(p_speed, s.default_speed), p_width,
                                  p_height, p_inputs, p_prompt_chars, p_negative_chars, p_loras)
    into v_row_cost
    from public.edit_queue_settings s;
  v_space := public.edit_input_space_refusal();
  if v_max_in_flight is not null and v_in_flight + p_requests > v_max_in_flight then
    return query select 'max_in_flight'::text,
                        format('edit request limit exceeded: max_in_flight (%s)', v_max_in_flight);
  elsif v_max_requests is not null and v_requests + p_requests > v_max_requests then
    return query select 'max_requests_per_hour'::text,
                        format('edit request limit exceeded: max_requests_per_hour (%s)', v_max_requests);
  elsif v_max_cost is not null and v_cost + p_requests * v_row_cost > v_max_cost then
    return query select 'max_cost_per_hour'::text,
                        format('edit request limit exceeded: max_cost_per_hour (%s)', v_max_cost);
  elsif v_space is not null then
    -- The question Storage's upload policies ask (15_storage.sql): these callers upload next.
    return query select split_part(v_space, ' ', 1),
                        format('edit request limit exceeded: %s: delete inputs you no longer need, or wait '
                               'for retention to delete them', v_space);
  else
    return query select null::text, null::text;
  end if;
end
$$;

comment on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer) is
  'Whether p_requests requests with these cost arguments (edit_request_cost''s) would pass the caller''s '
  'limits now: refused is null, or the limit (max_in_flight, max_requests_per_hour, max_cost_per_hour) '
  'or no_such_user, with the insert''s message. Advisory: the insert decides. Called before any image '
  'is decoded or uploaded (issue 22 item 4); so it also asks what Storage''s upload policies ask, '
  'whether the caller may store more inputs (max_stored_inputs, max_stored_input_bytes).';

create or replace function public.edit_request_reason_message(p_code text)
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
