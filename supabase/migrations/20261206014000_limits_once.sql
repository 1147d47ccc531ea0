-- Each rule once (issue 20): the limits that apply to a user (their edit_user_limits row over the
-- default one) were looked up by the same join in four functions, and the sliding hourly estimate
-- computed in three, one of them with the previous-hour case written out apart. Three helpers now hold
-- them (edit_user_limits_of, edit_user_usage_now, edit_user_hourly_estimate) and the four functions
-- are restated to call them, with the same verdicts (tests/test_fair_sharing.py, tests/test_retry_after.py,
-- tests/test_admission.py, tests/test_input_space.py). A signed-in user may also ask for their own limits through
-- POST /rest/v1/rpc/edit_user_limits_of.

create function public.edit_user_limits_of(p_user uuid)
returns public.edit_user_limits
language sql stable
set search_path = ''
as $$
  -- Column by column, the user's value or else the default row's (null there: no limit). Security
  -- invoker: a signed-in caller sees only their own row and the default (the policies below), so
  -- for anyone else's id this answers the default's values.
  select p_user,
         coalesce(u.max_in_flight, d.max_in_flight),
         coalesce(u.max_requests_per_hour, d.max_requests_per_hour),
         coalesce(u.max_cost_per_hour, d.max_cost_per_hour),
         coalesce(u.note, d.note),
         coalesce(u.updated_at, d.updated_at),
         coalesce(u.max_stored_inputs, d.max_stored_inputs),
         coalesce(u.max_stored_input_bytes, d.max_stored_input_bytes)
    from (select 1) one
    left join public.edit_user_limits d on d.user_id = '00000000-0000-0000-0000-000000000000'
    left join public.edit_user_limits u on u.user_id = p_user
$$;
comment on function public.edit_user_limits_of(uuid) is
  'The limits that apply to p_user: their edit_user_limits row over the default row, column by column '
  '(null: no limit). A signed-in user may ask for their own (POST /rest/v1/rpc/edit_user_limits_of).';

create function public.edit_user_usage_now(p_usage public.edit_user_usage)
returns public.edit_user_usage
language sql stable
set search_path = ''
as $$
  -- A row of an earlier hour moves on: the previous hour's counts become previous_hour_*, older ones
  -- count nothing (so does no row). Writes nothing; edit_request_admission_start stores it.
  select p_usage.user_id, h.hour,
         case when p_usage.hour_start = h.hour then p_usage.hour_requests else 0 end,
         case when p_usage.hour_start = h.hour then p_usage.hour_cost else 0 end,
         case when p_usage.hour_start = h.hour then p_usage.previous_hour_requests
              when p_usage.hour_start = h.hour - interval '1 hour' then p_usage.hour_requests else 0 end,
         case when p_usage.hour_start = h.hour then p_usage.previous_hour_cost
              when p_usage.hour_start = h.hour - interval '1 hour' then p_usage.hour_cost else 0 end,
         p_usage.updated_at
    from (select date_trunc('hour', now()) as hour) h
$$;
comment on function public.edit_user_usage_now(public.edit_user_usage) is
  'An edit_user_usage row as of this clock hour (counts of an older hour moved or dropped); writes nothing.';

create function public.edit_user_hourly_estimate(
  p_usage public.edit_user_usage, out requests double precision, out cost double precision)
language sql stable
set search_path = ''
as $$
  -- What the hourly limits bound: the previous hour x (1 - fraction of this hour gone) + this hour.
  select n.previous_hour_requests * (1 - g.gone) + n.hour_requests,
         n.previous_hour_cost * (1 - g.gone) + n.hour_cost
    from public.edit_user_usage_now(p_usage) n,
         (select (extract(epoch from now() - date_trunc('hour', now())) / 3600)::double precision as gone) g
$$;
comment on function public.edit_user_hourly_estimate(public.edit_user_usage) is
  'The sliding hourly estimate of requests and cost the hourly limits of edit_user_limits bound.';

-- The helpers at the top of this file: as security invoker, a user reaches only their own rows.
revoke all on function
  public.edit_user_limits_of(uuid),
  public.edit_user_usage_now(public.edit_user_usage),
  public.edit_user_hourly_estimate(public.edit_user_usage)
  from public, anon, authenticated;
grant execute on function
  public.edit_user_limits_of(uuid),
  public.edit_user_usage_now(public.edit_user_usage),
  public.edit_user_hourly_estimate(public.edit_user_usage)
  to service_role;
-- edit_request_retry_after runs as the caller; apps may ask for their own limits.
grant execute on function
  public.edit_user_limits_of(uuid),
  public.edit_user_usage_now(public.edit_user_usage)
  to authenticated;

create or replace function public.edit_request_admission_start(p_owner uuid)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_limited boolean := not public.edit_request_caller_is_operator();
  v_quantum double precision;
  v_default_speed text;
  v_max_in_flight integer;
  v_max_requests integer;
  v_max_cost double precision;
  v_usage public.edit_user_usage;
  v_base_requests double precision := 0;
  v_base_cost double precision := 0;
  v_in_flight integer;
  v_claimable integer;
begin
  -- First row of this owner in this transaction: everything the per-row checks need, kept in
  -- a transaction-local setting so that each further row costs O(1), however big the insert.
  select extract(epoch from s.fair_share_quantum), s.default_speed into v_quantum, v_default_speed
    from public.edit_queue_settings s;
  if v_limited then
    select l.max_in_flight, l.max_requests_per_hour, l.max_cost_per_hour
      into v_max_in_flight, v_max_requests, v_max_cost
      from public.edit_user_limits_of(p_owner) l;
    -- The usage row is the owner's lock: concurrent inserts by one user queue here, so the
    -- in-flight count below includes whatever the previous one committed.
    insert into public.edit_user_usage (user_id) values (p_owner) on conflict (user_id) do nothing;
    select * into v_usage from public.edit_user_usage where user_id = p_owner for update;
    if v_usage.hour_start is distinct from date_trunc('hour', now()) then
      v_usage := public.edit_user_usage_now(v_usage);
      update public.edit_user_usage
         set hour_start = v_usage.hour_start, hour_requests = v_usage.hour_requests,
             hour_cost = v_usage.hour_cost, previous_hour_requests = v_usage.previous_hour_requests,
             previous_hour_cost = v_usage.previous_hour_cost, updated_at = now()
       where user_id = p_owner
      returning * into v_usage;
    end if;
    select e.requests, e.cost into v_base_requests, v_base_cost
      from public.edit_user_hourly_estimate(v_usage) e;
  end if;
  -- Bounded: no more than one past the limit is ever counted (1000 for exempt callers, whose
  -- count only places their rows in the fair order). In flight counts for the limit; queued or
  -- processing (ahead in line, or running) for the fair order.
  select count(*), count(*) filter (where s.status <> 'awaiting_image') into v_in_flight, v_claimable from (
    select r.status from public.edit_requests r
     where r.user_id = p_owner and r.status in ('awaiting_image', 'queued', 'processing')
     limit coalesce(v_max_in_flight + 1, 1000)
  ) s;
  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s), claimable,
  -- default speed (last: concat_ws leaves out a null)
  return concat_ws(',', v_limited::int, v_in_flight, v_base_requests, v_base_cost,
                   coalesce(v_max_in_flight, -1), coalesce(v_max_requests, -1),
                   coalesce(v_max_cost, -1), v_quantum, v_claimable, v_default_speed);
end
$$;

create or replace function public.edit_request_retry_after(p_limit text, p_requests integer, p_cost double precision)
returns integer
language plpgsql stable
set search_path = ''
as $$
declare
  v_user uuid := auth.uid();
  v_gone double precision := extract(epoch from now() - date_trunc('hour', now())) / 3600;
  v_limits public.edit_user_limits;
  v_max double precision;
  v_amount double precision;
  v_usage public.edit_user_usage;
  v_previous double precision;
  v_current double precision;
begin
  -- Security invoker: a user reads their own limits and usage (the policies of this file).
  v_limits := public.edit_user_limits_of(v_user);
  if p_limit = 'max_requests_per_hour' then
    v_amount := p_requests;
    v_max := v_limits.max_requests_per_hour;
  elsif p_limit = 'max_cost_per_hour' then
    v_amount := p_cost;
    v_max := v_limits.max_cost_per_hour;
  else
    return null;
  end if;
  if v_user is null or v_max is null or v_amount is null or v_amount > v_max then
    return null;
  end if;
  select * into v_usage from public.edit_user_usage where user_id = v_user;
  v_usage := public.edit_user_usage_now(v_usage);
  v_previous := case p_limit when 'max_requests_per_hour' then v_usage.previous_hour_requests
                             else v_usage.previous_hour_cost end;
  v_current := case p_limit when 'max_requests_per_hour' then v_usage.hour_requests
                            else v_usage.hour_cost end;
  if v_current + v_amount <= v_max then
    -- Within this hour, once the previous hour's share has shrunk enough.
    if v_previous <= 0 then
      return 0;
    end if;
    return greatest(0, ceil((1 - (v_max - v_current - v_amount) / v_previous - v_gone) * 3600))::integer;
  end if;
  -- Not this hour: in the next one this hour's charge is the previous hour's, and shrinks.
  return ceil((1 - v_gone + greatest(0, 1 - (v_max - v_amount) / v_current)) * 3600)::integer;
end
$$;

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
  v_user uuid := auth.uid();
  v_max_in_flight integer;
  v_max_requests integer;
  v_max_cost double precision;
  v_usage public.edit_user_usage;
  v_requests double precision;
  v_cost double precision;
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
  select l.max_in_flight, l.max_requests_per_hour, l.max_cost_per_hour
    into v_max_in_flight, v_max_requests, v_max_cost
    from public.edit_user_limits_of(v_user) l;
  select * into v_usage from public.edit_user_usage where user_id = v_user;
  select e.requests, e.cost into v_requests, v_cost from public.edit_user_hourly_estimate(v_usage) e;
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

create or replace function public.edit_input_space_refusal()
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
