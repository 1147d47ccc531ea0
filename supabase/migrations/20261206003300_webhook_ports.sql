-- Webhook ports: an operator list, 443 and 80 by default (issue 22 item 6). Any port of an
-- allowlisted host was accepted: an attempt probed whatever listened there, and a filtered port
-- held a delivery slot for the whole timeout at no cost to the user. A URL now names a port on
-- edit_webhook_settings.allowed_ports (its scheme's when it names none), checked at registration,
-- at every claim (edit_webhook_url_refusal) and by the sender (WEBHOOK_ALLOWED_PORTS).
-- Endpoints registered before on other ports stay; their deliveries are refused at claim
-- (port_not_allowed, dead at once, replayable) until the operator lists the port.

alter table public.edit_webhook_settings
  add column allowed_ports integer[] not null default '{443,80}',
  add constraint edit_webhook_settings_ports_valid check (
    cardinality(allowed_ports) between 1 and 64
    and array_position(allowed_ports, null) is null
    and 1 <= all (allowed_ports) and 65535 >= all (allowed_ports));
comment on table public.edit_webhook_settings is
  'Operator settings of completion webhooks (one row): allow_http (accept http:// URLs, e.g. for '
  'tests), allow_private_addresses (accept private, loopback and link-local addresses), '
  'allowed_ports (the ports a URL may name; default 443 and 80).';

create or replace function public.edit_webhook_url_port(p_url text)
returns integer
language sql immutable parallel safe
set search_path = ''
as $$
  -- The port a URL of the accepted shape goes to: the one it names, else its scheme's (443, 80).
  -- Null when malformed. webhook_urls.webhook_url_port says the same.
  select case when m[2] is not null then m[2]::integer when p_url ~* '^https://' then 443 else 80 end
    from regexp_match(
      p_url, '^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?$') as m
$$;

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
  if not public.edit_webhook_url_port(p_url) = any (coalesce(v_settings.allowed_ports, '{443,80}')) then
    return 'port_not_allowed: ' || public.edit_webhook_url_port(p_url) || ' is not on the operator''s port list';
  end if;
  if public.edit_webhook_address_private(v_host) and not coalesce(v_settings.allow_private_addresses, false) then
    return 'private_address: ' || v_host || ' is a private, loopback or link-local address';
  end if;
  return null;
end
$$;

revoke all on function public.edit_webhook_url_port(text) from public, anon, authenticated;
grant execute on function public.edit_webhook_url_port(text) to service_role;
