-- Creation without an input image, and explicit output sizes.
--
-- A request may now name no input image when it gives a size: the processor then edits a
-- base canvas it builds itself (`base`: a plain `blank` canvas in `base_color`, or seeded
-- `noise`). `width`/`height` also choose the output size of an ordinary edit. Existing
-- rows, clients and functions keep working: every new column is nullable or has a default,
-- and the one loosened rule (0 input paths) only admits rows that were impossible before.

alter table public.edit_requests
  add column if not exists width integer,
  add column if not exists height integer,
  add column if not exists base text not null default 'blank',
  add column if not exists base_color text not null default '#ffffff';

comment on column public.edit_requests.width is
  'Output width in pixels (multiple of 16, 32 to 4096, with height at most 4 MP); null: the model''s rule.';
comment on column public.edit_requests.height is 'Output height in pixels; given with width, or both null.';
comment on column public.edit_requests.base is
  'The canvas a request without input images starts from: blank (base_color) or noise (from the seed).';
comment on column public.edit_requests.base_color is 'Colour of a blank canvas, #rrggbb.';

-- 0 to 3 paths (was 1 to 3); whether 0 is allowed depends on the size, checked below.
create or replace function public.edit_request_paths_valid(p_paths text[])
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  -- Object paths as Supabase Storage accepts them, without traversal or absolute paths.
  select p_paths is not null
     and cardinality(p_paths) between 0 and 3
     and not exists (
       select 1 from unnest(p_paths) as p(path)
       where path is null
          or char_length(path) not between 1 and 1024
          or path like '/%'
          or path like '%//%'
          or path ~ '(^|/)\.\.?(/|$)'
     )
$$;

do $$
begin
  -- Each constraint once, so the migration can be re-applied (as `supabase db reset` does not,
  -- but a hand-run `psql -f` might).
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_size_valid') then
    alter table public.edit_requests add constraint edit_requests_size_valid check (
      (width is null and height is null)
      -- Spelled out: a check that is NULL passes, so `height between ...` alone would let a
      -- width without a height through.
      or (width is not null and height is not null
          and width between 32 and 4096 and height between 32 and 4096
          and width % 16 = 0 and height % 16 = 0
          and width::bigint * height <= 4194304)
    );
  end if;
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_inputs_or_size') then
    -- Nothing to edit and no size to create at is a request no one can fulfil.
    alter table public.edit_requests add constraint edit_requests_inputs_or_size
      check (cardinality(input_paths) > 0 or width is not null);
  end if;
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_base_known') then
    alter table public.edit_requests add constraint edit_requests_base_known
      check (base in ('blank', 'noise'));
  end if;
  if not exists (select 1 from pg_constraint where conname = 'edit_requests_base_color_hex') then
    alter table public.edit_requests add constraint edit_requests_base_color_hex
      check (base_color ~ '^#[0-9A-Fa-f]{6}$');
  end if;
end
$$;

-- Users name these too (they are the request's content, not its state).
grant insert (width, height, base, base_color) on public.edit_requests to authenticated;
