-- Ids are the server's (issue #22 item 8).
--
-- Signed-in users could name `id` when inserting into edit_requests and edit_batches. A duplicate-key
-- error then told them that a row with that id exists, whoever owns it (an existence oracle), and a
-- chosen id could be one another system expected to be unguessable. The columns' defaults
-- (gen_random_uuid()) now choose; naming `id` as authenticated is refused with permission denied
-- (42501) whether or not the id exists. The service role may still name ids (operators' imports and
-- restores). The processor's REST and MCP ways in insert as the user and read the id back; they upload
-- under a random folder of their own, not the row's id. Decision record 0072.

revoke insert (id) on public.edit_requests from authenticated;
revoke insert (id) on public.edit_batches from authenticated;
