-- Webhook URLs: the private-address list misses nothing Python calls not global (issue 22,
-- "also look at"). Added: ::/96 (IPv4-compatible, deprecated: its v4 part could be anything),
-- fec0::/10 (site-local, deprecated), 2001::/23 (the IETF protocol block: Teredo 2001::/32, which
-- embeds an IPv4 address, benchmarking, ORCHID), 3fff::/20 (documentation), 5f00::/16 (SRv6 SIDs),
-- 100:0:0:1::/64 (discard) and 192.88.99.0/24 (the deprecated 6to4 relay). Before, an allowlisted
-- https://[2001::1]/ or https://[::10.0.0.1]/ was accepted at registration; the processor's own
-- list (processor/domain/webhook_urls.py) had the same gaps, so the sender connected to them.

create or replace function public.edit_webhook_address_private(p_host text)
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  v_address inet;
begin
  -- True for `localhost` and for addresses that are not public: private, shared (CGNAT), loopback,
  -- link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), site-local (deprecated),
  -- unspecified, multicast, reserved, documentation, benchmarking, the IETF protocol block
  -- 2001::/23 (Teredo, ORCHID), SRv6 SIDs, the discard prefixes, and IPv4 inside IPv6 (compatible,
  -- mapped, NAT64, 6to4 and its relay), whose v4 part could be any of these: IANA's special-purpose
  -- registries (processor/domain/webhook_urls.py lists the same networks, with the sources).
  -- Names other than localhost are resolved, and checked again, by the processor at delivery.
  if p_host = 'localhost' or p_host like '%.localhost' then
    return true;
  end if;
  if p_host !~ '^[0-9.]+$' and p_host !~ ':' then
    return false;
  end if;
  begin
    v_address := p_host::inet;
  exception when others then
    return true;  -- looks like an address but is none Postgres reads: never trusted
  end;
  return v_address <<= any (array[
    '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12',
    '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15',
    '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4',
    '::/96', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64', '100:0:0:1::/64',
    '2001::/23', '2001:db8::/32', '2002::/16', '3fff::/20', '5f00::/16', 'fc00::/7', 'fe80::/10',
    'fec0::/10', 'ff00::/8'
  ]::inet[]);
end
$$;
