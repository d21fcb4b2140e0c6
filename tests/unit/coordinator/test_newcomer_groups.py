"""The newcomers' share of leases per address group: throw-away identities on one holder's many
addresses (one home line's IPv6 /48 holds 65,536 /64s, each an address of its own for
`join.identities_per_address`) filled the new identities' whole share by sitting on leases, and
an honest newcomer elsewhere was refused every lease (bench/hostile.py: the payload worker, a
newcomer, got 0 of 46 tries). New identities of one group (an IPv6 /48; an IPv4 address is its
own) now hold
at most `lease_sizing.new_group_share` of the share between them; exempt addresses (the local
swarm's loopback) are not capped."""

from coordinator.rules.lease_size import Demand
from protocol.guard import address_group, address_key
from protocol.identity import KeyPair
from protocol.messages import KIND_REGISTRATION, HardwareReport, Registration


def test_address_groups_are_an_ipv4_address_and_an_ipv6_slash48_whatever_form_the_address_is_in():
    assert address_group("198.51.100.7") == address_group("::ffff:198.51.100.7") == "198.51.100.7/32"
    assert address_group("198.51.100.8") != address_group("198.51.100.7")   # neighbours are not one holder
    assert address_group("2001:db8:1:2::5") == address_group(address_key("2001:db8:1:ffff::1")) == "2001:db8:1::/48"
    assert address_group("2001:db8:2::1") != address_group("2001:db8:1::1")
    assert address_group("not an address") == "not an address"


def test_one_group_holds_at_most_its_share_of_the_newcomers_share():
    # the trainer takes 16 a version, a bound of 32; new identities' share 0.25: 8; a group's 0.25 of it: 2
    room = lambda new, of_group: Demand(16, in_flight=0, new=new, new_share=0.25, of_group=of_group,  # noqa: E731
                                        group_share=0.25).room(4, 2.0, new_identity=True)
    assert room(0, 0) == 2
    assert room(2, 2) == 0                      # the group's 2 are taken, 6 of the share left for the others
    assert room(2, 0) == 2                      # another group's newcomer
    assert room(7, 0) == 1                      # the share itself still bounds
    assert Demand(16, in_flight=0, new=2, new_share=0.25, of_group=None).room(4, 2.0, new_identity=True) == 6  # exempt
    # a tiny share still leaves one lease to a group
    assert Demand(2, in_flight=0, new=0, new_share=0.25, of_group=0, group_share=0.25).room(4, 2.0, True) == 1


def _register(s, key, address):
    env = s.seal(KIND_REGISTRATION, Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), key)
    r = s.http.post("/v1/workers/register", content=env.model_dump_json(),
                    headers={"content-type": "application/json", "x-forwarded-for": address})
    assert r.status_code == 200, r.text
    return key


def _proxied_with_an_established_worker(make_swarm):
    """A coordinator that takes each client's address from a trusted proxy's X-Forwarded-For (no
    exempt address, one identity per address) and one established worker at 198.51.100.1."""
    s = make_swarm(limits={"burst": 1000, "exempt_addresses": [], "trusted_proxies": ["127.0.0.1"]},
                   join={"identities_per_address": 1})
    s.publish(0)
    honest = _register(s, KeyPair.generate(), "198.51.100.1")
    s.establish(honest)
    return s, honest


def test_throw_away_identities_on_one_line_leave_the_newcomers_share_to_others(make_swarm):
    s, honest = _proxied_with_an_established_worker(make_swarm)
    assert s.batch(max_groups=32).status_code == 200       # the trainer's step: the newcomers' share is 8
    # eight identities, each on a /64 of its own, all in one /48
    squatters = [_register(s, KeyPair.generate(), f"2001:db8:1:{i}::1") for i in range(1, 9)]
    taken = [len(s.lease(k, 8)) for k in squatters]
    assert sum(taken) == 2, taken                          # before: 8, the whole share
    newcomer = _register(s, KeyPair.generate(), "203.0.113.5")
    assert len(s.lease(newcomer, 8)) == 2                  # before: 0, refused while the squatters sit
    other = _register(s, KeyPair.generate(), "2001:db8:2::1")   # another /48
    assert len(s.lease(other, 8)) == 2
    assert len(s.lease(honest, 8)) == 8                    # the established worker's bound is untouched


def test_exempt_addresses_are_not_capped_by_group(make_swarm):
    """The local swarm (the demo, every test) runs on loopback, exempt: its new identities share
    the newcomers' share as before."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    honest = s.new_worker()
    s.establish(honest)
    assert s.batch(max_groups=32).status_code == 200
    assert [len(s.lease(s.new_worker(), 8)) for _ in range(2)] == [8, 0]


def test_honest_newcomers_on_neighbouring_ipv4_addresses_are_not_held_together(make_swarm):
    """A cloud's or a campus's contributors share a /24: grouped by /24, their newcomers held a
    quarter of the newcomers' share between them (the WAN harness puts every site in one /24:
    the likely cause of one failure of its slow flapping-link test, whose newcomer got too few
    leases)."""
    s, honest = _proxied_with_an_established_worker(make_swarm)
    assert s.batch(max_groups=32).status_code == 200       # the newcomers' share is 8
    newcomers = [_register(s, KeyPair.generate(), f"198.51.100.{i}") for i in range(10, 14)]
    assert [len(s.lease(k, 2)) for k in newcomers] == [2, 2, 2, 2]   # before (by /24): 2, 0, 0, 0

