-- Retry-After for a per-user limit (issue 23): a 429 says when to come back. For the hourly limits
-- the database can tell: edit_request_retry_after computes when the sliding estimate of
-- edit_request_admission_start leaves room for the refused request (or batch). For max_in_flight it
-- cannot (a request must finish) and answers null; the REST API then says QUOTA_RETRY_SECONDS.

-- When a refused insert would pass ---------------------------------------------------------------
-- Retry-After for a PT429 refusal (the REST API's 429; apps may call it too): the seconds until the
-- caller's sliding hourly estimate, as edit_request_admission_start computes it (previous hour x
-- (1 - fraction of this hour gone) + this hour), leaves room for p_requests more requests costing
-- p_cost in all under p_limit. Null when it cannot tell: max_in_flight (a request of theirs must
-- finish), no such limit, or an amount over the limit itself (it never fits).

create function public.edit_request_retry_after(p_limit text, p_requests integer, p_cost double precision)
returns integer
language plpgsql stable
set search_path = ''
as $$
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_user uuid := auth.uid();
  v_hour timestamptz := date_trunc('hour', now());
  v_gone double precision := extract(epoch from now() - date_trunc('hour', now())) / 3600;
  v_max double precision;
  v_amount double precision;
  v_usage public.edit_user_usage;
  v_previous double precision := 0;
  v_current double precision := 0;
begin
  -- Security invoker: a user reads their own limits and usage (the policies of this file).
  if p_limit = 'max_requests_per_hour' then
    v_amount := p_requests;
    select coalesce(u.max_requests_per_hour, d.max_requests_per_hour) into v_max
      from (select 1) one
      left join public.edit_user_limits d on d.user_id = v_zero
      left join public.edit_user_limits u on u.user_id = v_user;
  elsif p_limit = 'max_cost_per_hour' then
    v_amount := p_cost;
    select coalesce(u.max_cost_per_hour, d.max_cost_per_hour) into v_max
      from (select 1) one
      left join public.edit_user_limits d on d.user_id = v_zero
      left join public.edit_user_limits u on u.user_id = v_user;
  else
    return null;
  end if;
  if v_user is null or v_max is null or v_amount is null or v_amount > v_max then
    return null;
  end if;
  select * into v_usage from public.edit_user_usage where user_id = v_user;
  if v_usage.hour_start = v_hour then
    v_previous := case p_limit when 'max_requests_per_hour' then v_usage.previous_hour_requests
                               else v_usage.previous_hour_cost end;
    v_current := case p_limit when 'max_requests_per_hour' then v_usage.hour_requests
                              else v_usage.hour_cost end;
  elsif v_usage.hour_start = v_hour - interval '1 hour' then
    v_previous := case p_limit when 'max_requests_per_hour' then v_usage.hour_requests
                               else v_usage.hour_cost end;
  end if;
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

comment on function public.edit_request_retry_after(text, integer, double precision) is
  'Seconds until p_requests more requests costing p_cost pass the caller''s hourly limit p_limit (a PT429 '
  'refusal''s Retry-After); null when it cannot tell (max_in_flight) or never (over the limit itself).';

revoke all on function public.edit_request_retry_after(text, integer, double precision)
  from public, anon, authenticated;
grant execute on function public.edit_request_retry_after(text, integer, double precision)
  to authenticated, service_role;
