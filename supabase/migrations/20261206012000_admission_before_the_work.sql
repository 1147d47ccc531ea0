-- Limits checked before the work (issue 22 item 4): REST and MCP decoded and uploaded every image
-- before the insert checked the caller's limits, so a user over them (max_in_flight = 0, a spent
-- cost budget) still took the shared validation processes and Storage. edit_request_admission_check
-- answers, as the user and without locking, what the insert would answer about their limits; the
-- ways in ask it first. New function only: nothing stored changes.

-- Admission before the work ------------------------------------------------------------------------
-- What the insert would answer about the caller's limits, asked before anything costly: the REST API
-- and MCP call it before they decode and upload a single image (issue 22 item 4), so a user over a
-- limit costs a query, not validation and Storage. The insert still decides (this takes no lock: a
-- concurrent insert of the same user may pass it first); the same numbers as
-- edit_request_admission_start and edit_requests_before_insert, read without writing or locking:
-- the limits (a user's row over the default), the sliding hourly estimate, the requests in flight
-- (at most max_in_flight + 1 read), the cost by edit_request_cost with the deployment's default
-- speed; the insert's refusal text (a batch over two limits may be told either). Security definer, for the
-- default speed (edit_queue_settings) and whether the caller's user still exists (a deleted user's
-- token is still valid until it expires); it reads the caller's own rows only, as auth.uid().
-- tests/test_admission.py proves its verdicts equal to the insert's.

create function public.edit_request_admission_check(
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
  if v_max_in_flight is not null and v_in_flight + p_requests > v_max_in_flight then
    return query select 'max_in_flight'::text,
                        format('edit request limit exceeded: max_in_flight (%s)', v_max_in_flight);
  elsif v_max_requests is not null and v_requests + p_requests > v_max_requests then
    return query select 'max_requests_per_hour'::text,
                        format('edit request limit exceeded: max_requests_per_hour (%s)', v_max_requests);
  elsif v_max_cost is not null and v_cost + p_requests * v_row_cost > v_max_cost then
    return query select 'max_cost_per_hour'::text,
                        format('edit request limit exceeded: max_cost_per_hour (%s)', v_max_cost);
  else
    return query select null::text, null::text;
  end if;
end
$$;

comment on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer) is
  'Whether p_requests requests with these cost arguments (edit_request_cost''s) would pass the caller''s '
  'limits now: refused is null, or the limit (max_in_flight, max_requests_per_hour, max_cost_per_hour) '
  'or no_such_user, with the insert''s message. Advisory: the insert decides. Called before any image '
  'is decoded or uploaded (issue 22 item 4).';

revoke all on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer)
  from public, anon, authenticated;
grant execute on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer)
  to authenticated, service_role;
