-- Output formats (issue 21, section 2; docs/decisions/0080-output-formats.md): a request names how its
-- result is encoded, png | webp | jpeg, and a quality for the lossy two. Null is the deployment's
-- default (OUTPUT_FORMAT, OUTPUT_QUALITY), as speed is; what was used goes into result.
--
-- * edit_requests.output_format and output_quality, with CHECKs mirroring rules.OUTPUT_FORMATS and
--   MIN/MAX_OUTPUT_QUALITY (tests/test_rule_parity.py sends their boundaries through every way in),
--   selectable and insertable by their owners;
-- * edit_batches carries them to each of its requests: the two columns, the insert grant, and the
--   fan-out's column list (edit_batches_fan_out, restated whole with the two names added).
--
-- No stored row changes: null is what every existing request meant (PNG, the only format until now).

alter table public.edit_requests
  add column output_format text,
  add column output_quality integer,
  add constraint edit_requests_output_format_known
    check (output_format is null or output_format in ('png', 'webp', 'jpeg')),
  add constraint edit_requests_output_quality_range check (output_quality is null or output_quality between 1 and 100);

comment on column public.edit_requests.output_format is
  'png | webp | jpeg: the output object is {id}.png, .webp or .jpg; null: the deployment default (OUTPUT_FORMAT). What was used is in result.output_format.';
comment on column public.edit_requests.output_quality is
  'WebP and JPEG quality, 1 to 100 (PNG ignores it); null: the deployment default (OUTPUT_QUALITY). What was used is in result.output_quality.';

grant select (output_format, output_quality) on public.edit_requests to authenticated;
grant insert (output_format, output_quality) on public.edit_requests to authenticated;

alter table public.edit_batches
  add column output_format text,
  add column output_quality integer;

grant insert (output_format, output_quality) on public.edit_batches to authenticated;

create or replace function public.edit_batches_fan_out()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  -- Security invoker on purpose: the requests are inserted as the caller, so RLS, column grants,
  -- the LoRA allowlist and the per-user limits apply to them exactly as to a single insert.
  v_batch jsonb := to_jsonb(new);
  v_names text;
  v_values text;
begin
  select string_agg(format('%I', c.name), ', ' order by c.ord),
         string_agg(format('p.%I', c.name), ', ' order by c.ord)
    into v_names, v_values
    from unnest(array['negative_prompt', 'num_inference_steps', 'true_cfg_scale', 'guidance_scale', 'seed',
                      'width', 'height', 'base', 'base_color', 'speed', 'loras', 'output_format',
                      'output_quality']) with ordinality as c(name, ord)
   where jsonb_typeof(v_batch -> c.name) is distinct from 'null';
  execute format(
    'insert into public.edit_requests (user_id, batch_id, prompt, input_paths%s) '
    'select $1, $2, p.prompt, array[i.path] || $3%s '
    '  from jsonb_populate_record(null::public.edit_requests, $4) p, '
    '       unnest($5) with ordinality as i(path, n) '
    ' order by i.n',
    coalesce(', ' || v_names, ''), coalesce(', ' || v_values, ''))
  using new.user_id, new.id, new.reference_paths, v_batch, new.input_paths;
  return null;
end
$$;
