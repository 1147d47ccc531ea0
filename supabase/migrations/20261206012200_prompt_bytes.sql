-- Prompts bounded in UTF-8 bytes of their NFC form, and charged so (issue 22, "also look at").
--
-- The bound was 2,000 characters, chosen as about 500 tokens of English; but the tokenizer (Qwen2's
-- byte-level BPE, which normalizes to NFC) makes up to five tokens of a rare character: 2,000 of
-- U+FB2C were 10,000 tokens, 2,000 from CJK extension B 6,066, and the pipeline truncates nothing.
-- Tokens are at most the bytes of the NFC form, whatever the script: the bound is now 2,000 of those
-- (rules.MAX_PROMPT_BYTES; about 460 tokens of English or of common Chinese), for prompt and
-- negative_prompt, on every row that is not finished, and the charge counts the same bytes where it
-- counted characters (edit_requests_before_insert passes them to edit_request_cost).
--
-- A request waiting or running with a prompt over the new bound stops this migration (it could not
-- be updated by the state machine afterwards): cancel it (select public.cancel_edit_request(id)) and
-- run the migration again. Finished rows keep what they had.

do $$
declare
  v_count integer;
begin
  select count(*) into v_count from public.edit_requests
   where status not in ('succeeded', 'failed', 'canceled')
     and (octet_length(normalize(prompt, NFC)) > 2000 or octet_length(normalize(negative_prompt, NFC)) > 2000);
  if v_count > 0 then
    raise exception '% unfinished edit request(s) have a prompt over 2000 bytes (UTF-8, NFC)', v_count
      using hint = 'Cancel them (select public.cancel_edit_request(id) from public.edit_requests where ...) and run this migration again.';
  end if;
end
$$;

alter table public.edit_requests
  drop constraint edit_requests_prompt_length,
  drop constraint edit_requests_negative_prompt_length;
alter table public.edit_requests
  add constraint edit_requests_prompt_length check (
    char_length(prompt) >= 1
    and (status in ('succeeded', 'failed', 'canceled') or octet_length(normalize(prompt, NFC)) <= 2000)
  ),
  add constraint edit_requests_negative_prompt_length check (
    status in ('succeeded', 'failed', 'canceled') or octet_length(normalize(negative_prompt, NFC)) <= 2000
  );

create or replace function public.edit_request_run_cost(
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

comment on function public.edit_request_cost(integer, real, text, integer, integer, integer, integer, integer, integer) is
  'What a request is charged against max_cost_per_hour, in default steps (a default edit: about 40): '
  'steps x the transformer work over the output and every input (4,292 tokens each, whatever the '
  'output size), x 2 with true CFG, a preset''s steps in place of the request''s, LoRAs. Arguments: '
  'num_inference_steps, true_cfg_scale, speed (null: the deployment''s default, charged as the '
  'costlier of quality and fast), width, height (null: 1 MP), input images, UTF-8 bytes of the NFC form '
  'of prompt and of negative_prompt (octet_length(normalize(prompt, NFC)): at least a byte a token), '
  'LoRAs named. docs/fair-sharing.md.';

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
              detail = format('This request costs %s (edit_request_cost); about %s used in the last hour with it.',
                              round(v_row_cost::numeric, 2), round(v_cost::numeric, 2)),
              hint = 'Use fewer steps, input images or LoRAs, a smaller size or a faster speed, or try again later; operators set limits in public.edit_user_limits.';
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
