-- Change notifications only for rows somebody waits on.
--
-- Migration 000600 sent a NOTIFY on `edit_request_changes` for every client-visible change of every
-- row: each claim, progress heartbeat and completion. A transaction that has sent a NOTIFY takes a
-- lock, held from its pre-commit until its end, that every other notifying transaction on the
-- server waits for: commits with notifications take turns, each with its WAL flush. With 8 workers
-- on one server the claim → complete cycle ran at 1,400 jobs/s with the notifications and 2,300
-- without (benchmarks/queue_vs_peers.py), though nobody listens for most rows: apps follow rows
-- through Realtime (logical replication, no NOTIFY), and only the REST API's waits and event
-- streams and the MCP tools LISTEN.
--
-- Those listeners now say which rows they follow: `edit_request_watches` holds (row, watcher,
-- expiry), set by `set_edit_request_watches`. The trigger notifies a change only when the row has
-- an unexpired watch: one index probe on a small table. A watcher renews its set while it holds it
-- and empties it when done; a process that dies leaves rows that expire (each call clears some).
-- A change whose statement began before a watch was registered, and that commits after the
-- waiter's first read, is not notified: the waiter sees it at its fallback re-read
-- (CHANGES_FALLBACK_SECONDS), as it sees changes missed during a listener's reconnect.

create table if not exists public.edit_request_watches (
  request_id uuid not null,
  watcher text not null check (length(watcher) between 1 and 200),
  expires_at timestamptz not null,
  primary key (request_id, watcher)
);

create index if not exists edit_request_watches_expiry_idx on public.edit_request_watches (expires_at);
create index if not exists edit_request_watches_watcher_idx on public.edit_request_watches (watcher);

comment on table public.edit_request_watches is
  'Rows a LISTEN session follows (REST waits and streams, MCP): only these get NOTIFY edit_request_changes.';

-- Internal bookkeeping of the processor: nobody else reads or writes it.
alter table public.edit_request_watches enable row level security;
revoke all on public.edit_request_watches from public, anon, authenticated, service_role;

create or replace function public.set_edit_request_watches(
  p_watcher text,
  p_request_ids uuid[],
  p_seconds integer
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- The whole set each time: a watcher that lost track (a dropped connection, a cancelled call)
  -- is right again after its next call, and renewal is the same call.
  if p_watcher is null or p_watcher = '' then
    raise exception 'set_edit_request_watches: p_watcher is required' using errcode = '22023';
  end if;
  if p_seconds is null or p_seconds < 1 then
    raise exception 'set_edit_request_watches: p_seconds must be positive' using errcode = '22023';
  end if;
  delete from public.edit_request_watches w
   where w.watcher = p_watcher and w.request_id <> all (coalesce(p_request_ids, '{}'));
  insert into public.edit_request_watches (request_id, watcher, expires_at)
  select distinct r.id, p_watcher, now() + make_interval(secs => p_seconds)
    from unnest(p_request_ids) as r(id)
   where r.id is not null
  on conflict (request_id, watcher) do update set expires_at = excluded.expires_at;
  -- What dead watchers left: a bounded bite per call, so no call grows with the garbage.
  delete from public.edit_request_watches w
   where w.ctid = any (array(select e.ctid from public.edit_request_watches e
                              where e.expires_at < now() order by e.expires_at limit 100));
end
$$;

comment on function public.set_edit_request_watches(text, uuid[], integer) is
  'The rows the processor''s LISTEN session p_watcher follows now, for p_seconds (it renews them).';

revoke all on function public.set_edit_request_watches(text, uuid[], integer) from public, anon, authenticated;
grant execute on function public.set_edit_request_watches(text, uuid[], integer) to service_role;

-- Definer: it reads the watches, which whoever runs the update (a definer function, or an operator)
-- may not.
create or replace function public.notify_edit_request_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if (new.status, new.progress, new.output_path, new.error_code)
       is distinct from (old.status, old.progress, old.output_path, old.error_code)
     and exists (select 1 from public.edit_request_watches w
                  where w.request_id = new.id and w.expires_at > now()) then
    perform pg_notify('edit_request_changes', new.id::text);
  end if;
  return null;
end
$$;

revoke all on function public.notify_edit_request_change() from public, anon, authenticated;
