-- Local development seed (`supabase db reset` runs it after the migrations). Never used in production.
-- A development user whose id the examples in the README use; sign in is not needed for SQL tests.
insert into auth.users (id, email, role, aud, raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
values ('00000000-0000-4000-8000-00000000d3e0', 'dev@example.test', 'authenticated', 'authenticated',
        '{"provider": "email", "providers": ["email"]}', '{}', now(), now())
on conflict (id) do nothing;
