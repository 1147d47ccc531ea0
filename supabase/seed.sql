-- Local development seed: `supabase db reset` (and the first `supabase start`) runs it after the
-- migrations ([db.seed] in config.toml). Never used in production; docs/local-supabase.md uses it.
--
-- 1. A user who can sign in with email and password: dev@example.test / dev-password
--    (supabase.auth.signInWithPassword). The rows are what GoTrue writes for a confirmed email
--    sign-up: auth.users with a bcrypt hash from pgcrypto (extensions.crypt, gen_salt('bf'), as
--    Supabase's docs seed users) and empty strings, not NULLs, in the token columns GoTrue reads
--    (a NULL there fails every sign-in with "Database error querying schema"); auth.identities with
--    the email identity GoTrue signs in through.
insert into auth.users (
  instance_id, id, aud, role, email, encrypted_password, email_confirmed_at, last_sign_in_at,
  raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
  confirmation_token, recovery_token, email_change_token_new, email_change
)
values (
  '00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-00000000d3e0', 'authenticated',
  'authenticated', 'dev@example.test', extensions.crypt('dev-password', extensions.gen_salt('bf')),
  now(), now(), '{"provider": "email", "providers": ["email"]}', '{}', now(), now(), '', '', '', ''
)
on conflict (id) do nothing;

insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
values (
  '00000000-0000-4000-8000-00000000d3e0', '00000000-0000-4000-8000-00000000d3e0',
  '{"sub": "00000000-0000-4000-8000-00000000d3e0", "email": "dev@example.test", "email_verified": true}',
  'email', now(), now(), now()
)
on conflict (provider_id, provider) do nothing;

-- 2. The wake-up webhook's Vault secrets, where `supabase start` did not already store them from the
--    environment ([db.vault] in config.toml reads EDIT_PROCESSOR_WEBHOOK_URL/_SECRET; the CLI skips
--    unset ones and upserts the rest before this seed runs). The defaults reach `edit-processor serve`
--    on the host (port 8000) from the database container; its WEBHOOK_SECRET must be the same value.
--    Plain PostgreSQL (the tests, `edit-processor dev`) has no Vault: nothing to do.
do $$
begin
  if to_regclass('vault.secrets') is null then
    return;
  end if;
  if not exists (select 1 from vault.secrets where name = 'edit_processor_webhook_url') then
    perform vault.create_secret('http://host.docker.internal:8000/webhooks/edit-requests',
                                'edit_processor_webhook_url');
  end if;
  if not exists (select 1 from vault.secrets where name = 'edit_processor_webhook_secret') then
    perform vault.create_secret('local-dev-webhook-secret', 'edit_processor_webhook_secret');
  end if;
end
$$;
