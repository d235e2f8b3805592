-- Prosody 0.12 as a throw-away S2S peer on loopback (tests/interop/servers/prosody.py fills in
-- the placeholders). Everything lives in @DIR@; nothing is read from the system configuration.
run_as_root = true                    -- a test run as root stays root (no setuid to 'prosody')
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
certificates = "@DIR@/certs"
log = { { levels = { min = "@LOG_LEVEL@" }, to = "file", filename = "@DIR@/prosody.log" } }

interfaces = { "@IFACE@" }
local_interfaces = { "@IFACE@" }
c2s_ports = { @C2S_PORT@ }
s2s_ports = { @S2S_PORT@ }
c2s_direct_tls_ports = {}
s2s_direct_tls_ports = { @S2S_DIRECT_TLS_PORTS@ }
http_ports = {}
https_ports = {}
component_ports = {}
use_ipv6 = false
use_dane = false

modules_enabled = {
	"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix";
}
modules_disabled = { "offline" }      -- a stanza for an offline user bounces, it is not stored

authentication = "internal_plain"
c2s_require_encryption = false        -- test clients log in with SASL PLAIN over loopback
allow_unencrypted_plain_auth = true
allow_registration = false

-- certificates are self-signed unless the test installs others: authenticate by dialback
s2s_secure_auth = false
@TLS@

-- remote domains come from a loopback DNS server (libunbound forwarding to it; .test is
-- a special-use zone that unbound answers itself unless told to look it up)
@DNS@

@EXTRA@

VirtualHost "@DOMAIN@"
	ssl = { certificate = "@DIR@/certs/@DOMAIN@.crt", key = "@DIR@/certs/@DOMAIN@.key" }
