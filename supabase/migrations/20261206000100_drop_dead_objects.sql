-- Dead functions gone, and no function left executable by PUBLIC (issue #20).
--
-- * edit_requests_on_object_stored(): the row trigger function on storage.objects that migration
--   20261201000500 replaced with the statement-level edit_requests_on_objects_stored(). No trigger
--   has called it since, yet it stayed SECURITY DEFINER and executable by PUBLIC, anon and
--   authenticated, and readers took it for the readiness hook.
-- * edit_request_lock_paths(text, text[]): the per-path advisory locks only the function above (and
--   the first edit_requests_before_insert) took; readiness locks are edit_request_lock_slot(s) now.
-- * edit_requests_keep_live_inputs() named edit_requests_keep_inputs_on_insert, dropped by migration
--   20261201001300, as the insert's side of the race; its comment now names the insert trigger that
--   takes the slot lock (the code is unchanged).
--
-- PostgreSQL lets PUBLIC execute every new function, and Supabase's default privileges add anon,
-- authenticated and service_role; PostgREST then offers each as /rest/v1/rpc/<name>. Eleven of our
-- functions were never closed. Who needs them now:
-- * trigger functions (edit_requests_wake_processor, edit_requests_touch): nobody calls a trigger
--   function; firing a trigger checks no EXECUTE privilege.
-- * the rules a CHECK constraint, the generated error_message column or an insert policy calls:
--   the role writing the row (authenticated, service_role), never anon, which may write no table.
-- * the webhook rules (edit_webhook_max_attempts, _max_endpoints, _url_host): pure; signed-in users
--   keep them, as migration 20261201000800 meant.
-- anon is left with no function of ours (docs/contract.md: anon gets nothing).
-- tests/test_sql_hygiene.py keeps it so: no function is executable by PUBLIC, and anon and
-- authenticated execute only the functions it lists.

drop function if exists public.edit_requests_on_object_stored();
drop function if exists public.edit_request_lock_paths(text, text[]);

revoke execute on function
  public.edit_requests_wake_processor(),
  public.edit_requests_touch()
  from public, anon, authenticated;

revoke execute on function
  public.edit_request_paths_valid(text[]),
  public.edit_request_paths_owned(text[], uuid),
  public.edit_request_reason_codes(),
  public.edit_request_reason_message(text),
  public.edit_request_loras_valid(jsonb),
  public.edit_webhook_max_attempts(),
  public.edit_webhook_max_endpoints(),
  public.edit_webhook_url_host(text)
  from public, anon;

create or replace function public.edit_requests_keep_live_inputs()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Runs in the deleting transaction (Storage's), for every deleted row. Under the slot lock an
  -- insert racing with this delete either committed already (seen here: the row is kept) or
  -- waits for this transaction and then finds the object gone (edit_requests_before_insert looks
  -- under the same slot lock).
  perform pg_advisory_xact_lock(7051, public.edit_request_lock_slot(old.bucket_id, old.name));
  if exists (
    select 1 from public.edit_requests r
     where r.status in ('awaiting_image', 'queued', 'processing')
       and r.input_bucket = old.bucket_id
       and r.input_paths @> array[old.name]
  ) then
    return null;  -- not deleted: a live request needs it
  end if;
  return old;
end
$$;
