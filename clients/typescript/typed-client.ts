// Compiled by `npm run check` (tests/test_typescript_types.py): database.types.ts plugs into supabase-js's
// typed client. Every @ts-expect-error line must be an error, or tsc fails: the types refuse what the
// database refuses.
import { createClient } from "@supabase/supabase-js"
import type { Database, Tables, TablesInsert } from "./database.types.ts"

const supabase = createClient<Database>("http://127.0.0.1:54321", "publishable-key")

export async function submit(path: string): Promise<Tables<"edit_requests">["status"] | undefined> {
  const request: TablesInsert<"edit_requests"> = { prompt: "make it snow", input_paths: [path] }
  const { data } = await supabase.from("edit_requests").insert(request).select("id, status, progress").single()
  const progress: number | undefined = data?.progress
  void progress
  // @ts-expect-error: prompt is required
  await supabase.from("edit_requests").insert({ input_paths: [path] })
  // @ts-expect-error: no such column
  await supabase.from("edit_requests").select("id").eq("colour", "blue")
  // @ts-expect-error: cancel_edit_request takes the request's id as p_id
  await supabase.rpc("cancel_edit_request", { id: "x" })
  const { data: canceled } = await supabase.rpc("cancel_edit_request", { p_id: "x" })
  const flag: boolean | null = canceled
  void flag
  return data?.status
}
