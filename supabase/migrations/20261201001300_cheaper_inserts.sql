-- Issue #13: a bulk insert as fast as procrastinate's bulk enqueue. Measured per row of a
-- 2,000-row insert by a signed-in user (benchmarks/queue_vs_peers.py; docs/fair-sharing.md), the
-- insert cost ~52 µs a row against procrastinate's ~32. Where it went, and what this changes,
-- semantics unchanged (tests/test_schema_constraints.py, test_fair_sharing.py, test_creation.py):
--
--   * error_message (generated) called edit_request_reason_message(null) for every row: a SQL
--     function with `set search_path` is never inlined, so each call pushed a GUC level (~7 µs).
--     STRICT: a null code gives null without calling it.
--   * the loras CHECK ran a plpgsql loop for the default '[]' (~2 µs): short-circuit it.
--   * the path CHECK and the insert policy were SQL functions over unnest(), one executor start
--     each (~2 µs each): the same rules as plpgsql loops over at most three paths.
--   * readiness: the common single-input row is one index probe, not a set comparison (~9 µs).
--   * the per-user admission state: only the fields a row changes are rewritten.
--   * readiness takes the row's slot lock before it looks (one lock per user, re-taken for free),
--     which makes the statement-level second look of migration 20261201001000
--     (edit_requests_after_inputs_kept: every inserted row probed again, ~2-4 µs a row) unneeded:
--     a Storage delete racing with the insert either committed before the look or waits for it.

alter function public.edit_request_reason_message(text) strict;

comment on function public.edit_request_reason_message(text) is
  'The message for users of a reason code (docs/reason-codes.md); null for null. STRICT on purpose: '
  'the generated error_message column calls it for every inserted row (see migration 20261201001300).';

alter table public.edit_requests
  drop constraint if exists edit_requests_loras_valid,
  add constraint edit_requests_loras_valid
    check (loras = '[]'::jsonb or public.edit_request_loras_valid(loras));

create or replace function public.edit_request_paths_valid(p_paths text[])
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

create or replace function public.edit_request_paths_owned(p_paths text[], p_user uuid)
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
  v_requests double precision;
  v_cost double precision;
  v_row_cost double precision;
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
    return new;
  end if;

  -- limited, in_flight, requests, cost, max_in_flight, max_requests, max_cost, quantum (s):
  -- written by edit_request_admission_start for the owner's first row in this transaction.
  v_key := 'edit_requests.owner_' || replace(new.user_id::text, '-', '');
  v_state := string_to_array(coalesce(nullif(current_setting(v_key, true), ''),
                                      public.edit_request_admission_start(new.user_id)), ',');
  v_in_flight := v_state[2]::integer;
  v_requests := v_state[3]::double precision + 1;
  v_row_cost := new.num_inference_steps * coalesce(new.width::double precision * new.height, 1048576) / 1048576;  -- edit_request_cost
  v_cost := v_state[4]::double precision + v_row_cost;

  if v_state[1] = '1' then
    if v_state[5]::integer >= 0 and v_in_flight + 1 > v_state[5]::integer then
      raise exception 'edit request limit exceeded: max_in_flight (%)', v_state[5]
        using errcode = 'PT429',
              detail = format('%s requests of this user are awaiting an image, queued or processing.', v_in_flight),
              hint = 'Wait for some to finish (or cancel them); operators set limits in public.edit_user_limits.';
    end if;
    if v_state[6]::integer >= 0 and v_requests > v_state[6]::integer then
      raise exception 'edit request limit exceeded: max_requests_per_hour (%)', v_state[6]
        using errcode = 'PT429',
              detail = format('About %s requests of this user in the last hour, this one included.', ceil(v_requests)),
              hint = 'Try again later; operators set limits in public.edit_user_limits.';
    end if;
    if v_state[7]::double precision >= 0 and v_cost > v_state[7]::double precision then
      raise exception 'edit request limit exceeded: max_cost_per_hour (%)', v_state[7]
        using errcode = 'PT429',
              detail = format('This request costs %s (steps x megapixels); about %s used in the last hour with it.',
                              round(v_row_cost::numeric, 2), round(v_cost::numeric, 2)),
              hint = 'Use fewer steps or a smaller size, or try again later; operators set limits in public.edit_user_limits.';
    end if;
  end if;

  new.fair_tag := new.created_at + make_interval(secs => v_state[8]::double precision * v_in_flight);
  perform set_config(v_key, concat_ws(',', v_state[1], v_in_flight + 1, v_requests, v_cost,
                                      v_state[5], v_state[6], v_state[7], v_state[8]), true);
  return new;
end
$$;

-- Every other row trigger an insert meets runs only for rows that need it (a plpgsql call is
-- ~2.5 µs a row even when it returns at once): the webhook endpoint check of migration
-- 20261201000800 only for rows that name an endpoint.
drop trigger if exists edit_requests_check_webhook_endpoint on public.edit_requests;
create trigger edit_requests_check_webhook_endpoint
  before insert or update of webhook_endpoint_id on public.edit_requests
  for each row when (new.webhook_endpoint_id is not null)
  execute function public.edit_requests_check_webhook_endpoint();

drop trigger if exists edit_requests_after_inputs_kept on public.edit_requests;
drop function if exists public.edit_requests_keep_inputs_on_insert();

-- Readiness is decided under the slot lock (above), so the end-of-statement second look at rows
-- inserted awaiting an image (migration 20261201000500's step 2: the slot locks again, then every
-- such row probed again) can find nothing new: an upload either committed before the row's look
-- or waited for this insert and queues its rows itself (edit_requests_on_objects_stored). What is
-- left: charge the hour's usage, wake the processor.
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
begin
  -- 1. Charge the hour's usage (limited callers only: their rows passed the per-row checks).
  if not public.edit_request_caller_is_operator() then
    update public.edit_user_usage u
       set hour_requests = u.hour_requests + s.n, hour_cost = u.hour_cost + s.cost, updated_at = now()
      from (select n.user_id, count(*) as n,
                   sum(public.edit_request_cost(n.num_inference_steps, n.width, n.height)) as cost
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
