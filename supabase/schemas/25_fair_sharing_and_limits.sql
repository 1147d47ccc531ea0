-- Fair sharing of one GPU among users who may be hostile, and what an insert goes through.
--
--  * Per-user limits at insert (requests in flight, requests per hour, cost per hour: the GPU work
--    of each request, edit_request_cost), set by operators in public.edit_user_limits; over a limit
--    the insert fails with SQLSTATE PT429 (PostgREST answers HTTP 429) and a message naming the limit. The check is in
--    edit_requests_before_insert below, the hour's charge in edit_requests_after_insert; both are
--    here and nowhere else. Callers acting as the service role are exempt (by role, never claims).
--  * A fair claim order: priority first (operators), then the request's fair_tag, which is the time
--    it became claimable (queued: at insert when its images were already stored, else when the
--    last one arrived) plus fair_share_quantum (edit_queue_settings) for every request its owner
--    already had queued or processing then. A user with fewer requests ahead goes first; nothing
--    waits forever (a deep request's tag is a fixed time, so newer requests stop passing it); a row
--    inserted before its images banks no place (edit_request_places). The claim
--    (20_state_machine.sql) stays one index scan, and no counter row is written by claims or
--    completions: the processor never waits on a row a client transaction holds.
--  * Readiness is decided at insert too, under the slot locks of 15_storage.sql, so RETURNING
--    (PostgREST's return=representation) shows whether the row is queued or awaiting its images.
--
-- Operator-facing reference: docs/fair-sharing.md.

-- Limits and usage --------------------------------------------------------------------------------

create table public.edit_user_limits (
  -- The all-zero uuid is the default row; a user's row overrides it column by column (null:
  -- the default's value). In the default row, null means no limit.
  user_id uuid primary key,
  max_in_flight integer check (max_in_flight >= 0),
  max_requests_per_hour integer check (max_requests_per_hour >= 0),
  max_cost_per_hour double precision check (max_cost_per_hour >= 0),
  note text,
  updated_at timestamptz not null default now(),
  -- What the user may hold in edit-inputs (15_storage.sql counts it): checked where bytes arrive,
  -- by Storage's upload policies and by the REST API's and MCP's admission, not at insert.
  max_stored_inputs bigint check (max_stored_inputs >= 0),
  max_stored_input_bytes bigint check (max_stored_input_bytes >= 0)
);
comment on table public.edit_user_limits is
  'Per-user limits checked at insert (service_role and postgres are exempt). user_id '
  '00000000-0000-0000-0000-000000000000 is the default for everyone; other rows override it '
  'column by column. Cost is edit_request_cost (the transformer work of the steps over the output '
  'and every input; a default edit costs about 40); each row''s charge is in edit_requests.cost. '
  'max_stored_inputs and max_stored_input_bytes bound what the user holds in edit-inputs: checked '
  'when they upload (Storage) or submit through the REST API or MCP, not at insert.';
insert into public.edit_user_limits
  (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour, max_stored_inputs, max_stored_input_bytes, note)
values ('00000000-0000-0000-0000-000000000000', 100, 1000, 20000, 10000, 10 * 1024 * 1024 * 1024::bigint,
        'default for every user');

create table public.edit_user_usage (
  -- Written only by a user's own inserts (never by claims or completions), so the processor
  -- never waits on a row a client transaction holds.
  user_id uuid primary key,
  hour_start timestamptz,
  hour_requests integer not null default 0,
  hour_cost double precision not null default 0,
  previous_hour_requests integer not null default 0,
  previous_hour_cost double precision not null default 0,
  updated_at timestamptz not null default now()
);
comment on table public.edit_user_usage is
  'Requests and cost charged per clock hour (this and the previous one); the hourly limits use '
  'a sliding estimate: previous x (1 - fraction of this hour gone) + this hour.';

-- What applies to a user now, written once: the limits (their row over the default) and the hourly
-- usage (rolled to this clock hour, and its sliding estimate). The insert (edit_request_admission_start),
-- the advance check (edit_request_admission_check), Retry-After (edit_request_retry_after) and
-- Storage's upload policies (edit_input_space_refusal, 15_storage.sql) read them here.

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

-- The in-flight count at admission reads at most limit + 1 entries of this index; with the status in
-- it, edit_request_places counts an owner's queued and processing rows without reading their rows
-- awaiting images.
create index edit_requests_in_flight_idx
  on public.edit_requests (user_id, status) where status in ('awaiting_image', 'queued', 'processing');

-- What a request costs ------------------------------------------------------------------------------
-- The work the GPU does for it, in default steps (one denoising step of the model card's edit: one
-- input, about 1 MP out, true CFG), so that a default 40-step edit costs about 40, as when the charge
-- was steps x output megapixels. QwenImageEditPlusPipeline resizes every input image to a 1024² area
-- for the VAE and a 384² one for the vision encoder whatever its size (diffusers
-- src/diffusers/pipelines/qwenimage/pipeline_qwenimage_edit_plus.py, VAE_IMAGE_SIZE and
-- CONDITION_IMAGE_SIZE), and each one's 4,096 + 196 tokens join every transformer forward, however
-- small the output; so the charge counts them. processor/domain/cost.py is the same formula in Python
-- (tests/test_request_cost.py proves them equal), docs/fair-sharing.md explains it with examples, and
-- benchmarks/edit_cost.py compares it with the FLOPs of the real architecture (within 0.3 %).
-- Plain arithmetic on the arguments (no SET clause, no table), so both functions are inlined into the
-- insert trigger's expression.

create function public.edit_request_run_cost(
  p_steps integer,
  p_cfg boolean,
  p_adapters integer,
  p_width integer,
  p_height integer,
  p_inputs integer,
  p_prompt_chars integer,
  p_negative_chars integer,
  p_loras integer
)
returns double precision
language sql immutable parallel safe
as $$
  -- One way of running a request: p_steps steps of one forward (two with true CFG, the second over
  -- the negative prompt); a forward over T tokens does T x (1 + T / 18432) (linear layers, and joint
  -- attention, quadratic in T; 18,432 = 6 x 3,072 is where the two are equal); T = the output's
  -- tokens (16 x 16 pixels each; 1 MP when no size) + 4,292 per input + one per byte of the prompt
  -- (p_prompt_chars: UTF-8 bytes of its NFC form, the most tokens the tokenizer makes of it);
  -- each active LoRA adapter adds 1/16 to every forward, each LoRA named 4 steps for its load;
  -- 24,410.390625 is the work of one default step (two forwards over 8,388 tokens).
  select p_steps
         * ((coalesce(p_width * p_height, 1048576)::double precision / 256 + p_inputs * 4292 + p_prompt_chars)
              * (1 + (coalesce(p_width * p_height, 1048576)::double precision / 256 + p_inputs * 4292 + p_prompt_chars) / 18432)
            + case when p_cfg
                   then (coalesce(p_width * p_height, 1048576)::double precision / 256 + p_inputs * 4292 + p_negative_chars)
                        * (1 + (coalesce(p_width * p_height, 1048576)::double precision / 256 + p_inputs * 4292 + p_negative_chars) / 18432)
                   else 0 end)
         * (1 + p_adapters::double precision / 16) / 24410.390625
         + 4 * p_loras
$$;

create function public.edit_request_cost(
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
returns double precision
language sql immutable parallel safe
as $$
  -- quality runs the request's steps, with true CFG unless true_cfg_scale is 1 (diffusers also skips
  -- it below 1, ComfyUI does not: charged as if it ran); fast and fastest run 8 and 4 steps of one
  -- forward with their Lightning adapter; null (the deployment's default, not known here) is charged
  -- as the costlier of quality and fast, never less than it runs.
  select case p_speed
           when 'quality' then public.edit_request_run_cost(p_steps, p_true_cfg_scale <> 1, p_loras, p_width, p_height,
                                                            p_inputs, p_prompt_chars, p_negative_chars, p_loras)
           when 'fast' then public.edit_request_run_cost(8, false, p_loras + 1, p_width, p_height,
                                                         p_inputs, p_prompt_chars, p_negative_chars, p_loras)
           when 'fastest' then public.edit_request_run_cost(4, false, p_loras + 1, p_width, p_height,
                                                            p_inputs, p_prompt_chars, p_negative_chars, p_loras)
           else greatest(public.edit_request_run_cost(p_steps, p_true_cfg_scale <> 1, p_loras, p_width, p_height,
                                                      p_inputs, p_prompt_chars, p_negative_chars, p_loras),
                         public.edit_request_run_cost(8, false, p_loras + 1, p_width, p_height,
                                                      p_inputs, p_prompt_chars, p_negative_chars, p_loras))
         end
$$;

comment on function public.edit_request_cost(integer, real, text, integer, integer, integer, integer, integer, integer) is
  'What a request is charged against max_cost_per_hour, in default steps (a default edit: about 40): '
  'steps x the transformer work over the output and every input (4,292 tokens each, whatever the '
  'output size), x 2 with true CFG, a preset''s steps in place of the request''s, LoRAs. Arguments: '
  'num_inference_steps, true_cfg_scale, speed (null: the deployment''s default, charged as the '
  'costlier of quality and fast), width, height (null: 1 MP), input images, UTF-8 bytes of the NFC form '
  'of prompt and of negative_prompt (octet_length(normalize(prompt, NFC)): at least a byte a token), '
  'LoRAs named. docs/fair-sharing.md.';

-- Places in line of rows that become claimable after insert -----------------------------------------
-- A row inserted before its images is not in line: its place is decided when it becomes queued
-- (edit_requests_on_objects_stored in 15_storage.sql, the sweep's readiness backstop in
-- 20_state_machine.sql), exactly as an insert places a row queued at once. Otherwise rows inserted
-- early and uploaded later would carry the places of their insert (a banked day of places, at the
-- defaults). Retries, releases and lapsed leases keep their place (the row was in line already).

create function public.edit_request_places(p_ids uuid[])
returns table (id uuid, fair_tag timestamptz)
language sql stable
-- A few rows as a rule (one upload completes a request or a few): an estimate that lets the updates
-- that join it find their rows through the primary key rather than scan the table.
rows 10
set search_path = ''
as $$
  -- For the rows p_ids, about to become queued in this statement: now() + fair_share_quantum x
  -- (their owner's requests already queued or processing + the ones placed before them here, in
  -- creation order). One bounded count per owner, however many rows (1000: as an exempt insert).
  with owners as (
    select o.user_id,
           (select count(*) from (select 1 from public.edit_requests q
                                   where q.user_id = o.user_id and q.status in ('queued', 'processing')
                                   limit 1000) c) as ahead
      from (select distinct w.user_id from public.edit_requests w
             where w.id = any(p_ids) and w.user_id is not null) o
  )
  select w.id,
         now() + s.fair_share_quantum * case
           when w.user_id is null then 0
           else o.ahead + row_number() over (partition by w.user_id order by w.created_at, w.id) - 1
         end
    from public.edit_requests w
    cross join public.edit_queue_settings s
    left join owners o on o.user_id = w.user_id
   where w.id = any(p_ids)
$$;

-- Admission: limits and the fair tag --------------------------------------------------------------
-- Cost per row is O(1): the first row of an owner in a transaction locks their usage row (so
-- concurrent inserts by one user queue behind each other), counts their rows in flight and keeps
-- the running totals in a transaction-local setting; each further row checks and bumps them.

create function public.edit_request_admission_start(p_owner uuid)
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

create function public.edit_requests_before_insert()
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

create trigger edit_requests_before_insert
  before insert on public.edit_requests
  for each row execute function public.edit_requests_before_insert();

-- Once per statement: charge the hour's usage, wake the processor for the rows inserted queued (as
-- edit_requests_wake_processor, 30_wakeups.sql, does for one updated row).
create function public.edit_requests_after_insert()
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

create trigger edit_requests_after_insert
  after insert on public.edit_requests
  referencing new table as new_rows
  for each statement execute function public.edit_requests_after_insert();

-- Access ------------------------------------------------------------------------------------------
-- Users may read the limits that apply to them (the default row and their own) and their usage;
-- they write none of it. anon reads nothing.

alter table public.edit_user_limits enable row level security;
alter table public.edit_user_usage enable row level security;
revoke all on public.edit_user_limits, public.edit_user_usage from public, anon, authenticated;
grant all on public.edit_user_limits, public.edit_user_usage to service_role;
grant select on public.edit_user_limits, public.edit_user_usage to authenticated;
create policy "users read their limits" on public.edit_user_limits
  for select to authenticated
  using (user_id = (select auth.uid()) or user_id = '00000000-0000-0000-0000-000000000000');
create policy "users read their usage" on public.edit_user_usage
  for select to authenticated
  using (user_id = (select auth.uid()));
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

revoke all on function
  public.edit_request_places(uuid[]),
  public.edit_request_run_cost(integer, boolean, integer, integer, integer, integer, integer, integer, integer),
  public.edit_request_cost(integer, real, text, integer, integer, integer, integer, integer, integer),
  public.edit_request_admission_start(uuid),
  public.edit_requests_before_insert(),
  public.edit_requests_after_insert()
  from public, anon, authenticated;
grant execute on function
  public.edit_request_places(uuid[]),
  public.edit_request_run_cost(integer, boolean, integer, integer, integer, integer, integer, integer, integer),
  public.edit_request_cost(integer, real, text, integer, integer, integer, integer, integer, integer),
  public.edit_request_admission_start(uuid),
  public.edit_requests_before_insert(),
  public.edit_requests_after_insert()
  to service_role;
-- A pure rule apps may price a request with before they insert it (POST /rest/v1/rpc/edit_request_cost).
grant execute on function
  public.edit_request_run_cost(integer, boolean, integer, integer, integer, integer, integer, integer, integer),
  public.edit_request_cost(integer, real, text, integer, integer, integer, integer, integer, integer)
  to authenticated;

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

comment on function public.edit_request_retry_after(text, integer, double precision) is
  'Seconds until p_requests more requests costing p_cost pass the caller''s hourly limit p_limit (a PT429 '
  'refusal''s Retry-After); null when it cannot tell (max_in_flight) or never (over the limit itself).';

revoke all on function public.edit_request_retry_after(text, integer, double precision)
  from public, anon, authenticated;
grant execute on function public.edit_request_retry_after(text, integer, double precision)
  to authenticated, service_role;

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

comment on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer) is
  'Whether p_requests requests with these cost arguments (edit_request_cost''s) would pass the caller''s '
  'limits now: refused is null, or the limit (max_in_flight, max_requests_per_hour, max_cost_per_hour) '
  'or no_such_user, with the insert''s message. Advisory: the insert decides. Called before any image '
  'is decoded or uploaded (issue 22 item 4); so it also asks what Storage''s upload policies ask, '
  'whether the caller may store more inputs (max_stored_inputs, max_stored_input_bytes).';

revoke all on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer)
  from public, anon, authenticated;
grant execute on function public.edit_request_admission_check(integer, integer, real, text, integer, integer, integer, integer, integer, integer)
  to authenticated, service_role;
