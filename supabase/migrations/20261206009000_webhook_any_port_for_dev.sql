-- Any port, for local development only (`edit-processor dev`): a receiver on this machine listens on
-- whatever port its framework picked, and the port list (443 and 80 by default,
-- 20261206003300_webhook_ports.sql) would refuse it. The switch is explicit and off by default; dev's
-- scratch database turns it on together with allow_http and allow_private_addresses, and the
-- processor's WEBHOOK_ALLOWED_PORTS=* says the same (webhook_urls.webhook_url_refusal: any port when
-- allowed_ports is None).

alter table public.edit_webhook_settings add column allow_any_port boolean not null default false;
comment on column public.edit_webhook_settings.allow_any_port is
  'Accept a URL on any port, not only allowed_ports (local development: receivers on this machine).';

create or replace function public.edit_webhook_url_refusal(p_url text)
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_settings public.edit_webhook_settings;
  v_host text := public.edit_webhook_url_host(p_url);
begin
  -- Why a webhook URL is refused (the processor's webhook_urls.webhook_url_refusal says the same), or null.
  select * into v_settings from public.edit_webhook_settings where id;
  if p_url is null or char_length(p_url) > 2048 or v_host is null then
    return 'malformed: scheme://host[:port]/path, no user info, ASCII, at most 2048 characters';
  end if;
  if p_url !~* '^https://' and not coalesce(v_settings.allow_http, false) then
    return 'not_https: only https:// URLs are accepted';
  end if;
  if not public.edit_webhook_host_allowed(v_host) then
    return 'host_not_allowed: ' || v_host || ' is not on the operator''s allowlist';
  end if;
  if not coalesce(v_settings.allow_any_port, false)
     and not public.edit_webhook_url_port(p_url) = any (coalesce(v_settings.allowed_ports, '{443,80}')) then
    return 'port_not_allowed: ' || public.edit_webhook_url_port(p_url) || ' is not on the operator''s port list';
  end if;
  if public.edit_webhook_address_private(v_host) and not coalesce(v_settings.allow_private_addresses, false) then
    return 'private_address: ' || v_host || ' is a private, loopback or link-local address';
  end if;
  return null;
end
$$;
