-- A request that breaks a rule is refused for the rule, not for its owner's limits (issue 22: found by
-- the standing adversary, tests/test_adversary.py). The limits were checked in the BEFORE INSERT
-- trigger, which runs before the CHECK constraints: an app's row with a 4096 x 4096 output (invalid_size)
-- was refused as over max_cost_per_hour (its cost is that of a 16 MP output), a PT429 that tells the
-- app to wait and try again, which can never help. Now edit_requests_before_insert keeps the first
-- refusal of the statement in a transaction-local setting (edit_requests.refusal) and
-- edit_requests_after_insert raises it, with the same SQLSTATE, message, detail and hint, once every
-- row has passed the CHECKs. Both functions are restated.

create or replace function public.edit_requests_before_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key text;
  v_state text[];
  v_in_flight integer;
  v_claimable integer;
  v_requests double precision;
  v_cost double precision;
  v_row_cost double precision;
  v_refusal jsonb;
begin
  -- Readiness under the paths' slot locks: a row whose inputs are all visible is queued, any
  -- other row waits for its upload (edit_requests_on_objects_stored queues it). Decided here, not later, so that RETURNING (PostgREST's return=representation) shows it.
  -- The caller cannot pick (authenticated users cannot even name the column).
  -- (Each presence check is one index probe on (bucket_id, name): a correlated join on name can
  -- be planned as a scan of the whole bucket when statistics are stale.)
  if new.status in ('queued', 'awaiting_image') then
    -- The slot lock first (edit_request_lock_slot, inlined: a SQL function call per row costs
    -- more than the lock), then the look: an upload or a Storage delete (edit_requests_keep_live_inputs)
    -- of these paths either committed before (this look sees it: each statement of a volatile
    -- function takes a new snapshot) or waits for this transaction and then sees this row.
    -- A user's paths lie in their own folder, one slot, taken once and then found held.
    -- (`is null`: the lock returns void; an IF is a simple expression, a PERFORM a query.)
    if cardinality(new.input_paths) = 1 then
      if pg_advisory_xact_lock(7051, hashtext(new.input_bucket || '/' || split_part(new.input_paths[1], '/', 1)) & 63) is null then
        null;
      end if;
      perform 1 from storage.objects o where o.bucket_id = new.input_bucket and o.name = new.input_paths[1];
      new.status := case when found then 'queued' else 'awaiting_image' end;
    else
      perform public.edit_request_lock_slots(array(
        select distinct public.edit_request_lock_slot(new.input_bucket, p.path)
          from unnest(new.input_paths) as p(path) where p.path is not null order by 1));
      new.status := case
        when exists (
          select 1 from unnest(new.input_paths) as p(path)
           where p.path <> all (array(select o.name from storage.objects o
                                           where o.bucket_id = new.input_bucket and o.name = any(new.input_paths)))
        ) then 'awaiting_image'
        else 'queued'
      end;
    end if;
  end if;

  if new.user_id is null then
    new.fair_tag := new.created_at;
    new.cost := public.edit_request_cost(
      new.num_inference_steps, new.true_cfg_scale, new.speed, new.width, new.height,
      cardinality(new.input_paths), octet_length(normalize(new.prompt, NFC)), octet_length(normalize(new.negative_prompt, NFC)),
      case when jsonb_typeof(new.loras) = 'array' then jsonb_array_length(new.loras) else 0 end);
    return new;
  end if;

  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s),
  -- claimable, default speed: written by edit_request_admission_start for the owner's first row in
  -- this transaction.
  v_key := 'edit_requests.owner_' || replace(new.user_id::text, '-', '');
  v_state := string_to_array(coalesce(nullif(current_setting(v_key, true), ''),
                                      public.edit_request_admission_start(new.user_id)), ',');
  v_in_flight := v_state[2]::integer;
  v_claimable := v_state[9]::integer;
  v_requests := v_state[3]::double precision + 1;
  -- The charge (a speed left null is the deployment's default, edit_queue_settings.default_speed);
  -- kept on the row for its owner to see and for the statement's usage update. (A malformed LoRA
  -- list counts none here: the CHECKs, after this trigger, refuse it by name.)
  v_row_cost := public.edit_request_cost(
    new.num_inference_steps, new.true_cfg_scale, coalesce(new.speed, v_state[10]), new.width, new.height,
    cardinality(new.input_paths), octet_length(normalize(new.prompt, NFC)), octet_length(normalize(new.negative_prompt, NFC)),
    case when jsonb_typeof(new.loras) = 'array' then jsonb_array_length(new.loras) else 0 end);
  new.cost := v_row_cost;
  v_cost := v_state[4]::double precision + v_row_cost;

  -- Over a limit, the statement is refused, but by edit_requests_after_insert, once every row has
  -- passed the CHECK constraints (which run after this trigger): a request that breaks a rule is
  -- refused for that rule (invalid_size, ...), never as over a limit that waiting would lift. The
  -- first refusal of the statement is kept in a transaction-local setting.
  if v_state[1] = '1' and coalesce(current_setting('edit_requests.refusal', true), '') = '' then
    if v_state[5]::integer >= 0 and v_in_flight + 1 > v_state[5]::integer then
      v_refusal := jsonb_build_object(
        'message', format('edit request limit exceeded: max_in_flight (%s)', v_state[5]),
        'detail', format('%s requests of this user are awaiting an image, queued or processing.', v_in_flight),
        'hint', 'Wait for some to finish (or cancel them); operators set limits in public.edit_user_limits.');
    elsif v_state[6]::integer >= 0 and v_requests > v_state[6]::integer then
      v_refusal := jsonb_build_object(
        'message', format('edit request limit exceeded: max_requests_per_hour (%s)', v_state[6]),
        'detail', format('About %s requests of this user in the last hour, this one included.', ceil(v_requests)),
        'hint', 'Try again later; operators set limits in public.edit_user_limits.');
    elsif v_state[7]::double precision >= 0 and v_cost > v_state[7]::double precision then
      v_refusal := jsonb_build_object(
        'message', format('edit request limit exceeded: max_cost_per_hour (%s)', v_state[7]),
        'detail', format('This request costs %s (edit_request_cost); about %s used in the last hour with it.',
                         round(v_row_cost::numeric, 2), round(v_cost::numeric, 2)),
        'hint', 'Use fewer steps, input images or LoRAs, a smaller size or a faster speed, or try again later; operators set limits in public.edit_user_limits.');
    end if;
    if v_refusal is not null then
      perform set_config('edit_requests.refusal', v_refusal::text, true);
    end if;
  end if;

  -- The place in line of a row that is claimable now: one quantum per request of its owner ahead
  -- of it (queued or processing, this statement's earlier rows included). A row awaiting its
  -- images gets its place when they arrive (edit_request_places); until then the tag is only its
  -- creation time, which no claim reads (the claim index holds queued rows only).
  if new.status = 'queued' then
    new.fair_tag := new.created_at + make_interval(secs => v_state[8]::double precision * v_claimable);
    v_claimable := v_claimable + 1;
  else
    new.fair_tag := new.created_at;
  end if;
  perform set_config(v_key, concat_ws(',', v_state[1], v_in_flight + 1, v_requests, v_cost,
                                      v_state[5], v_state[6], v_state[7], v_state[8], v_claimable,
                                      v_state[10]), true);
  return new;
end
$$;

create or replace function public.edit_requests_after_insert()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.edit_requests;
  v_url text;
  v_secret text;
  v_format text;
  v_body jsonb;
  v_headers jsonb;
  v_refusal jsonb := nullif(current_setting('edit_requests.refusal', true), '')::jsonb;
begin
  -- 0. A row over its owner's limits (edit_requests_before_insert kept the first refusal): every row
  --    passed the CHECK constraints, so the statement is refused for the limit, SQLSTATE PT429.
  if v_refusal is not null then
    perform set_config('edit_requests.refusal', '', true);
    raise exception '%', v_refusal->>'message'
      using errcode = 'PT429', detail = v_refusal->>'detail', hint = v_refusal->>'hint';
  end if;

  -- 1. Charge the hour's usage (limited callers only: their rows passed the per-row checks).
  if not public.edit_request_caller_is_operator() then
    update public.edit_user_usage u
       set hour_requests = u.hour_requests + s.n, hour_cost = u.hour_cost + s.cost, updated_at = now()
      from (select n.user_id, count(*) as n, sum(n.cost) as cost
              from new_rows n where n.user_id is not null group by n.user_id) s
     where u.user_id = s.user_id;
  end if;

  -- 2. Wake-up, as edit_requests_wake_processor does for one row, for every row inserted queued
  --    and due: one notification each and, where pg_net and Vault exist, one webhook each (a row
  --    inserted awaiting its image is woken by that row trigger when the upload queues it).
  perform pg_notify('edit_requests', n.id::text)
     from new_rows n
    where n.status = 'queued' and (n.next_attempt_at is null or n.next_attempt_at <= now());
  if to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null
     or to_regclass('vault.decrypted_secrets') is null then
    return null;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_url using 'edit_processor_webhook_url';
  if v_url is null or v_url = '' then
    return null;
  end if;
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_secret using 'edit_processor_webhook_secret';
  execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 limit 1'
     into v_format using 'edit_processor_webhook_format';
  for v_row in
    select * from new_rows n
     where n.status = 'queued' and (n.next_attempt_at is null or n.next_attempt_at <= now())
  loop
    if v_format = 'runpod' then
      v_body := jsonb_build_object('input', jsonb_build_object('edit_request_id', v_row.id));
      v_headers := jsonb_build_object('Content-Type', 'application/json', 'Authorization', 'Bearer ' || coalesce(v_secret, ''));
    else
      v_body := jsonb_build_object('type', 'INSERT', 'table', tg_table_name, 'schema', tg_table_schema,
                                   'record', to_jsonb(v_row), 'old_record', null);
      v_headers := jsonb_build_object('Content-Type', 'application/json', 'X-Webhook-Secret', coalesce(v_secret, ''));
    end if;
    execute 'select net.http_post(url := $1, body := $2, params := $3, headers := $4, timeout_milliseconds := $5)'
      using v_url, v_body, '{}'::jsonb, v_headers, 5000;
  end loop;
  return null;
end
$$;
