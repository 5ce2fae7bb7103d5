"""The slurmlink burst-buffer driver's #DW directives (slurmlink.burstbuffer.directives).

Rules are checked with the upstream-compatible parser (resources.dws.directives), plan() against
a small site, environment() for both grammars.
"""

from __future__ import annotations

from typing import Any

import pytest

from slurmlink.burstbuffer.directives import (
    DRIVER,
    BufferRequest,
    BufferRequestError,
    PersistentInfo,
    PoolInfo,
    SiteStorage,
    StagePath,
    StagingRequest,
    environment,
    plan,
    slurmlink_rules,
    staging,
)
from slurmlink.resources.dws.directives import (
    DirectiveError,
    check_directives,
    check_workflow_directives,
    driver_registrations,
    rules_from_objects,
)
from slurmlink.resources.dws.directives import (
    tester_rules as make_tester_rules,
)

GiB = 2**30
TiB = 2**40

# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


def make_site(**overrides: Any) -> SiteStorage:
    """A site with per-node types in pool ``local`` (3 nodes of 100 GiB) and gluster in ``shared``."""
    pools = {
        "local": PoolInfo("local", ("xfs", "raw", "dir"), GiB, 300 * GiB, 100 * GiB),
        "shared": PoolInfo("shared", ("gluster",), GiB, 1 * TiB, 512 * GiB),
    }
    persistent = {
        "team-data": PersistentInfo("team-data", "gluster", 1000, in_use_by=("bb12", "wf-x")),
        "mine": PersistentInfo("mine", "xfs", 1000),
        "theirs": PersistentInfo("theirs", "gluster", 2000),
        "open-data": PersistentInfo("open-data", "gluster", 2000, shared=True),
        "going": PersistentInfo("going", "gluster", 1000, destroying=True),
    }
    values: dict[str, Any] = {"pools": pools, "persistent": persistent}
    values.update(overrides)
    return SiteStorage(**values)


SITE = make_site()


def rejected(directives: list[str], site: SiteStorage = SITE, **kwargs: Any) -> BufferRequestError:
    with pytest.raises(BufferRequestError) as caught:
        plan(directives, site, **kwargs)
    assert "\n" not in str(caught.value)  # Slurm shows one line
    return caught.value


@pytest.fixture(scope="module")
def rules() -> list[Any]:
    return rules_from_objects(slurmlink_rules() + make_tester_rules())


# --------------------------------------------------------------------------------------
# the DWDirectiveRule
# --------------------------------------------------------------------------------------


def test_rule_object_shape() -> None:
    [obj] = slurmlink_rules("other-ns")
    assert obj["apiVersion"] == "dataworkflowservices.github.io/v1alpha2"
    assert obj["kind"] == "DWDirectiveRule"
    assert obj["metadata"] == {"name": "slurmlink", "namespace": "other-ns"}
    assert {entry["driverLabel"] for entry in obj["spec"]} == {DRIVER}
    assert slurmlink_rules()[0]["metadata"]["namespace"] == "dws-system"


def test_rules_are_fresh_copies() -> None:
    first = slurmlink_rules()
    first[0]["spec"][0]["ruleDefs"].clear()
    assert slurmlink_rules()[0]["spec"][0]["ruleDefs"]


def test_watch_states_follow_nnf() -> None:
    states = {e["command"]: e.get("watchStates") for e in slurmlink_rules()[0]["spec"]}
    assert states["jobdw"] == "Proposal,Setup,PreRun,PostRun,Teardown"
    assert states["persistentdw"] == "Proposal,Setup,PreRun,PostRun,Teardown"
    assert states["create_persistent"] == "Proposal,Setup,Teardown"
    assert states["destroy_persistent"] == "Proposal,Teardown"
    for command in ("copy_in", "stage_in"):
        assert states[command] == "Proposal,DataIn,Teardown"
    for command in ("copy_out", "stage_out"):
        assert states[command] == "Proposal,DataOut,Teardown"
    assert states["swap"] is None


VALID = [
    "#DW jobdw type=xfs capacity=100GiB name=scratch",
    "#DW jobdw type=gluster capacity=1TB name=shared-fs pool=shared profile=default",
    "#DW jobdw type=raw capacity=1.5TiB name=raw1",
    "#DW jobdw type=dir capacity=4096 name=d1",
    "#DW jobdw type=xfs capacity=512B name=tiny requires=copy-offload",
    "#DW jobdw type=xfs capacity=2PB name=huge",
    "#DW jobdw capacity=10GiB access_mode=striped type=scratch",
    "#DW jobdw capacity=1TB access_mode=striped,private type=scratch pool=wlm_pool",
    "#DW jobdw capacity=1TB access_mode=private,striped type=scratch",
    "#DW persistentdw name=team-data",
    "#DW create_persistent type=gluster capacity=1TiB name=team-data",
    "#DW create_persistent type=xfs name=no-capacity",
    "#DW destroy_persistent name=team-data",
    "#DW copy_in source=/lus/in destination=$DW_JOB_scratch/in profile=default",
    "#DW copy_out source=$DW_JOB_scratch/out destination=/lus/out",
    "#DW stage_in source=/lus/in destination=$DW_JOB_STRIPED/in type=directory",
    "#DW stage_out source=$DW_JOB_STRIPED/out destination=/lus/out type=file",
    "#DW swap 1GiB",
]


@pytest.mark.parametrize("directive", VALID)
def test_upstream_check_accepts(directive: str, rules: list[Any]) -> None:
    check_directives([directive], rules)


def test_upstream_check_accepts_them_together_from_the_objects() -> None:
    directives = [
        "#DW jobdw type=xfs capacity=100GiB name=fs-a",
        "#DW jobdw type=xfs capacity=100GiB name=fs-b",
        "#DW persistentdw name=team-data",
        "#DW Proposal action=complete",  # the test driver's, served by its own rules
    ]
    check_workflow_directives(directives, slurmlink_rules() + make_tester_rules())


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("#DW jobdw type=xfs capacity=10 GiB name=fs-a", "unsupported argument 'GiB'"),
        ("#DW jobdw type=xfs capacity=10XB name=fs-a", "argument 'capacity' invalid string '10XB'"),
        ("#DW jobdw type=xfs capacity=1GiB name=Upper", "argument 'name' invalid string 'Upper'"),
        ("#DW jobdw type=xfs capacity=1GiB name=1st", "argument 'name' invalid string '1st'"),
        (
            "#DW jobdw access_mode=ldbalance capacity=1GiB",
            "argument 'access_mode' invalid string 'ldbalance'",
        ),
        # keys are anchored: a longer key is not taken for a known one
        ("#DW jobdw fs_type=xfs capacity=1GiB name=fs-a", "unsupported argument 'fs_type'"),
        ("#DW jobdw type=xfs capacity name=fs-a", "argument 'capacity' requires value"),
        ("#DW jobdw type=xfs capacity=1GiB name=fs-a requires=magic", "invalid string 'magic' in list"),
        ("#DW create_persistent name=x1 capacity=1GiB", "missing required argument '^type$'"),
        ("#DW create_persistent type=xfs capacity=1GiB", "missing required argument '^name$'"),
        ("#DW destroy_persistent", "missing required argument '^name$'"),
        ("#DW persistentdw requires=copy-offload", "missing required argument '^name$'"),
        ("#DW copy_in source=/a", "missing required argument '^destination$'"),
        ("#DW stage_in source=/a destination=/b type=tree", "argument 'type' invalid string 'tree'"),
        ("#DW cache_in source=/a", "invalid directive '#DW cache_in source=/a'"),
    ],
)
def test_upstream_check_rejects(directive: str, message: str, rules: list[Any]) -> None:
    with pytest.raises(DirectiveError) as caught:
        check_directives([directive], rules)
    assert message in str(caught.value)


def test_job_buffer_names_are_unique_within_the_workflow(rules: list[Any]) -> None:
    with pytest.raises(DirectiveError, match="value 'fs-a' must be unique within 'jobdw_name'"):
        check_directives(
            ["#DW jobdw type=xfs capacity=1GiB name=fs-a", "#DW jobdw type=raw capacity=1GiB name=fs-a"],
            rules,
        )


def test_driver_registered_for_buffer_and_copy_commands(rules: list[Any]) -> None:
    directives = [
        "#DW jobdw type=xfs capacity=1GiB name=fs-a",
        "#DW copy_in source=/a destination=$DW_JOB_a/",
        "#DW destroy_persistent name=old",
        "#DW swap 1GiB",
    ]
    registered = driver_registrations(directives, rules)
    assert {(label, index) for label, index, _ in registered} == {(DRIVER, 0), (DRIVER, 1), (DRIVER, 2)}
    assert [s for _, i, s in registered if i == 1] == ["Proposal", "DataIn", "Teardown"]
    assert [s for _, i, s in registered if i == 2] == ["Proposal", "Teardown"]


# --------------------------------------------------------------------------------------
# plan(): NNF grammar
# --------------------------------------------------------------------------------------


def test_nnf_jobdw() -> None:
    text = "#DW jobdw type=xfs capacity=100GiB name=scratch"
    assert plan([text], SITE) == [
        BufferRequest(0, "jobdw", "scratch", "xfs", 100 * GiB, True, None, "nnf", text, None)
    ]


def test_nnf_jobdw_shared_type_with_pool_and_profile() -> None:
    text = "#DW jobdw type=gluster capacity=0.5TB name=shared-fs pool=shared profile=fast"
    [request] = plan([text], SITE)
    assert (request.fs_type, request.per_compute, request.pool, request.profile) == (
        "gluster",
        False,
        "shared",
        "fast",
    )
    assert request.capacity == 500_000_000_000
    assert request.key == "job/shared-fs"


def test_several_jobdw_keep_directive_order_and_indexes() -> None:
    directives = [
        "#DW Proposal action=complete",
        "#DW jobdw type=xfs capacity=1GiB name=fs-a",
        "#DW jobdw type=dir capacity=2GiB name=fs-b",
    ]
    requests = plan(directives, SITE)
    assert [(r.index, r.name, r.fs_type, r.capacity) for r in requests] == [
        (1, "fs-a", "xfs", GiB),
        (2, "fs-b", "dir", 2 * GiB),
    ]


def test_other_drivers_directives_are_ignored() -> None:
    assert plan(["#DW Proposal action=complete", "#DW Teardown action=error message=x"], SITE) == []
    assert plan([], SITE) == []


def test_persistentdw_resolves_type_from_the_instance() -> None:
    [request] = plan(["#DW persistentdw name=team-data"], SITE, user_id=1000)
    assert request == BufferRequest(
        0, "persistentdw", "team-data", "gluster", None, False, None, "nnf", "#DW persistentdw name=team-data"
    )
    assert request.key == "persistent/team-data"
    [mine] = plan(["#DW persistentdw name=mine"], SITE, user_id=1000)
    assert (mine.fs_type, mine.per_compute) == ("xfs", True)


def test_create_persistent() -> None:
    text = "#DW create_persistent type=gluster capacity=200GiB name=new-data pool=shared"
    [request] = plan([text], SITE, user_id=1000)
    assert request == BufferRequest(
        0, "create_persistent", "new-data", "gluster", 200 * GiB, False, "shared", "nnf", text, None
    )


def test_create_persistent_datawarp_scratch_is_the_striped_type() -> None:
    [request] = plan(["#DW create_persistent type=scratch capacity=1GiB name=dw-res"], SITE)
    assert (request.fs_type, request.per_compute, request.grammar) == ("gluster", False, "datawarp")


def test_destroy_persistent_by_owner_root_or_unchecked() -> None:
    text = "#DW destroy_persistent name=mine"
    for user_id in (1000, 0, None):
        [request] = plan([text], SITE, user_id=user_id)
        assert (request.command, request.name, request.fs_type, request.capacity) == (
            "destroy_persistent",
            "mine",
            "xfs",
            None,
        )


def test_several_destroy_persistent_are_allowed() -> None:
    site = make_site(persistent={"a1": PersistentInfo("a1", "xfs", 1), "b1": PersistentInfo("b1", "xfs", 1)})
    requests = plan(["#DW destroy_persistent name=a1", "#DW destroy_persistent name=b1"], site, user_id=1)
    assert [r.name for r in requests] == ["a1", "b1"]


def test_create_persistent_alongside_job_buffers() -> None:
    requests = plan(
        [
            "#DW jobdw type=xfs capacity=1GiB name=fs-a",
            "#DW create_persistent type=xfs capacity=1GiB name=keep",
        ],
        SITE,
    )
    assert [r.command for r in requests] == ["jobdw", "create_persistent"]


def test_capacity_exactly_the_largest_node_fits() -> None:
    [request] = plan(["#DW jobdw type=xfs capacity=100GiB name=fs-a"], SITE)
    assert request.capacity == 100 * GiB


def test_capacity_unknown_pool_sizes_are_not_checked() -> None:
    site = make_site(pools={"p": PoolInfo("p", ("xfs",), GiB)})
    [request] = plan(["#DW jobdw type=xfs capacity=1PiB name=fs-a"], site)
    assert request.capacity == 2**50


# --------------------------------------------------------------------------------------
# plan(): DataWarp grammar
# --------------------------------------------------------------------------------------


def test_datawarp_striped() -> None:
    text = "#DW jobdw capacity=10GiB access_mode=striped type=scratch"
    assert plan([text], SITE) == [
        BufferRequest(0, "jobdw", "striped", "gluster", 10 * GiB, False, None, "datawarp", text, None)
    ]


def test_datawarp_private() -> None:
    [request] = plan(["#DW jobdw capacity=10GiB access_mode=private type=scratch"], SITE)
    assert (request.name, request.fs_type, request.per_compute, request.key) == (
        "private",
        "xfs",
        True,
        "job/private",
    )


@pytest.mark.parametrize(
    ("access", "order"),
    [("striped,private", ["striped", "private"]), ("private,striped", ["private", "striped"])],
)
def test_datawarp_striped_and_private(access: str, order: list[str]) -> None:
    text = f"#DW jobdw capacity=10GiB access_mode={access} type=scratch pool=local"
    site = make_site(striped_type="xfs")  # pool=local must serve both
    requests = plan([text], site)
    assert [r.name for r in requests] == order
    assert {r.capacity for r in requests} == {10 * GiB}
    assert {r.index for r in requests} == {0}
    assert {r.pool for r in requests} == {"local"}
    assert {r.name: r.per_compute for r in requests} == {"striped": False, "private": True}


def test_datawarp_defaults_type_scratch_and_access_striped() -> None:
    [only_access] = plan(["#DW jobdw capacity=1GiB access_mode=private"], SITE)
    assert (only_access.name, only_access.grammar) == ("private", "datawarp")
    [only_type] = plan(["#DW jobdw capacity=1GiB type=scratch"], SITE)
    assert (only_type.name, only_type.fs_type) == ("striped", "gluster")


def test_site_chooses_the_datawarp_types() -> None:
    site = make_site(striped_type="xfs", private_type="dir")
    requests = plan(["#DW jobdw capacity=1GiB access_mode=striped,private type=scratch"], site)
    assert [(r.name, r.fs_type) for r in requests] == [("striped", "xfs"), ("private", "dir")]


def test_persistentdw_takes_the_grammar_of_the_job() -> None:
    nnf = plan(["#DW jobdw type=xfs capacity=1GiB name=fs-a", "#DW persistentdw name=team-data"], SITE)
    assert [r.grammar for r in nnf] == ["nnf", "nnf"]
    datawarp = plan(
        ["#DW jobdw capacity=1GiB access_mode=striped type=scratch", "#DW persistentdw name=team-data"], SITE
    )
    assert [r.grammar for r in datawarp] == ["datawarp", "datawarp"]


# --------------------------------------------------------------------------------------
# plan(): rejections
# --------------------------------------------------------------------------------------


def test_type_not_configured() -> None:
    error = rejected(["#DW jobdw type=lustre capacity=1TiB name=fs-a"])
    assert str(error) == (
        "type=lustre is not available here; configured types: dir, gluster, raw, xfs "
        "(in '#DW jobdw type=lustre capacity=1TiB name=fs-a')"
    )
    assert (error.index, error.directive, error.problem.startswith("type=lustre")) == (
        0,
        "#DW jobdw type=lustre capacity=1TiB name=fs-a",
        True,
    )


def test_no_types_configured() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a"], SiteStorage())
    assert "type=xfs is not available here: no burst-buffer types are configured" in str(error)


def test_missing_type_name_or_capacity() -> None:
    assert "#DW jobdw needs type=: the file-system type, one of dir, gluster, raw, xfs" in str(
        rejected(["#DW jobdw capacity=1GiB name=fs-a"])
    )
    assert "#DW jobdw needs name=" in str(rejected(["#DW jobdw type=xfs capacity=1GiB"]))
    assert "#DW jobdw needs capacity=" in str(rejected(["#DW jobdw type=xfs name=fs-a"]))
    assert "#DW jobdw needs capacity=" in str(rejected(["#DW jobdw access_mode=striped type=scratch"]))
    assert "#DW create_persistent needs capacity=" in str(
        rejected(["#DW create_persistent type=xfs name=keep"])
    )


def test_bare_argument_needs_a_value() -> None:
    assert "capacity= needs a value" in str(rejected(["#DW jobdw type=xfs name=fs-a capacity"]))
    assert "pool= needs a value" in str(rejected(["#DW jobdw type=xfs name=fs-a capacity=1GiB pool="]))


def test_unknown_pool() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a pool=nvme"])
    assert "pool=nvme does not exist; pools: local, shared" in str(error)


def test_pool_not_serving_the_type() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a pool=shared"])
    assert "pool=shared does not serve type xfs (it serves gluster); pools serving xfs: local" in str(error)


@pytest.mark.parametrize("size", ["0", "0GiB", "0.0TB"])
def test_zero_capacity(size: str) -> None:
    assert f"capacity={size} must be more than zero" in str(
        rejected([f"#DW jobdw type=xfs capacity={size} name=fs-a"])
    )


def test_bad_capacity() -> None:
    # plan() may run without the rule check before it (the driver re-checks in Proposal)
    error = rejected(["#DW jobdw type=xfs capacity=lots name=fs-a"])
    assert "capacity=lots is not a size: write a number with a unit, such as 500GiB" in str(error)


def test_per_compute_capacity_larger_than_any_node() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=5TiB name=fs-a"])
    assert "capacity=5TiB per compute node is more than pool local can ever provide " in str(error)
    assert "(100GiB on its largest storage node)" in str(error)


def test_capacity_rounded_to_granules_before_comparing() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=107374182401 name=fs-a"])  # 100GiB + 1 byte
    assert "more than pool local can ever provide" in str(error)


def test_shared_capacity_larger_than_the_pool() -> None:
    error = rejected(["#DW jobdw type=gluster capacity=2TiB name=fs-a"])
    assert "capacity=2TiB is more than pool shared can ever provide (1TiB)" in str(error)
    # a shared file system may be larger than any single node
    assert plan(["#DW jobdw type=gluster capacity=900GiB name=fs-a"], SITE)[0].capacity == 900 * GiB


def test_capacity_larger_than_every_pool_of_the_type() -> None:
    site = make_site(
        pools={
            "small": PoolInfo("small", ("xfs",), GiB, 10 * GiB, 10 * GiB),
            "big": PoolInfo("big", ("xfs",), GiB, 40 * GiB, 20 * GiB),
        }
    )
    error = rejected(["#DW jobdw type=xfs capacity=30GiB name=fs-a"], site)
    assert "is more than any pool serving xfs can ever provide (the most is pool big: 20GiB" in str(error)
    assert plan(["#DW jobdw type=xfs capacity=15GiB name=fs-a"], site)[0].capacity == 15 * GiB
    assert "pool small can ever provide (10GiB" in str(
        rejected(["#DW jobdw type=xfs capacity=15GiB name=fs-a pool=small"], site)
    )


def test_create_persistent_too_big() -> None:
    error = rejected(["#DW create_persistent type=gluster capacity=2TiB name=big"])
    assert "capacity=2TiB is more than pool shared can ever provide (1TiB)" in str(error)


def test_duplicate_job_buffer_names() -> None:
    error = rejected(
        ["#DW jobdw type=xfs capacity=1GiB name=fs-a", "#DW jobdw type=raw capacity=1GiB name=fs-a"]
    )
    assert "2 #DW jobdw directives are named fs-a; give each buffer its own name=" in str(error)
    assert error.index is None


def test_persistent_name_used_twice() -> None:
    assert "persistent buffer mine is named in 2 #DW persistentdw directives; keep one" in str(
        rejected(["#DW persistentdw name=mine", "#DW persistentdw name=mine"])
    )
    assert "cannot be both used and destroyed by one job" in str(
        rejected(["#DW persistentdw name=mine", "#DW destroy_persistent name=mine"])
    )
    assert "named in 2 #DW destroy_persistent directives" in str(
        rejected(["#DW destroy_persistent name=mine", "#DW destroy_persistent name=mine"])
    )
    error = rejected(["#DW create_persistent type=xfs capacity=1GiB name=new", "#DW persistentdw name=new"])
    assert "persistent buffer new is created by this job, so the job cannot also use it" in str(error)
    assert "(#DW persistentdw): use it from a later job" in str(error)


def test_two_create_persistent() -> None:
    error = rejected(
        [
            "#DW create_persistent type=xfs capacity=1GiB name=p1",
            "#DW create_persistent type=xfs capacity=1GiB name=p2",
        ]
    )
    assert "a job may create only one persistent buffer" in str(error)


def test_create_with_destroy() -> None:
    error = rejected(
        ["#DW create_persistent type=xfs capacity=1GiB name=p1", "#DW destroy_persistent name=mine"]
    )
    assert "a job may not both create and destroy persistent buffers" in str(error)


def test_create_existing_name() -> None:
    error = rejected(["#DW create_persistent type=gluster capacity=1GiB name=theirs"])
    assert "a persistent buffer named theirs already exists; choose another name" in str(error)
    assert "2000" not in str(error)  # nothing about its owner


def test_missing_persistent() -> None:
    assert "there is no persistent buffer named nope; create it first" in str(
        rejected(["#DW persistentdw name=nope"])
    )
    assert "there is no persistent buffer named nope (in" in str(
        rejected(["#DW destroy_persistent name=nope"])
    )


def test_persistent_being_destroyed() -> None:
    assert "persistent buffer going is being destroyed" in str(rejected(["#DW persistentdw name=going"]))
    assert "persistent buffer going is being destroyed" in str(
        rejected(["#DW destroy_persistent name=going"])
    )


def test_destroy_in_use_names_the_jobs() -> None:
    error = rejected(["#DW destroy_persistent name=team-data"], user_id=1000)
    assert "persistent buffer team-data is in use by job 12, workflow wf-x; destroy it once" in str(error)


def test_destroy_of_another_users_buffer() -> None:
    error = rejected(["#DW destroy_persistent name=theirs"], user_id=1000)
    assert "persistent buffer theirs belongs to another user (uid 2000); only its owner or root" in str(error)
    # not revealing its users to someone who may not destroy it
    error = rejected(["#DW destroy_persistent name=team-data"], user_id=3000)
    assert "belongs to another user" in str(error)
    assert "job 12" not in str(error)


def test_persistentdw_of_another_users_buffer_unless_shared() -> None:
    assert "persistent buffer theirs belongs to another user (uid 2000)" in str(
        rejected(["#DW persistentdw name=theirs"], user_id=1000)
    )
    assert plan(["#DW persistentdw name=open-data"], SITE, user_id=1000)[0].name == "open-data"
    assert plan(["#DW persistentdw name=theirs"], SITE)[0].name == "theirs"  # uid unknown: unchecked


def test_swap_not_supported() -> None:
    assert "#DW swap is not supported" in str(rejected(["#DW swap 10GiB"]))


def test_datawarp_cache_not_supported() -> None:
    error = rejected(["#DW jobdw capacity=1GiB access_mode=striped type=cache"])
    assert "type=cache (DataWarp cache mode) is not supported: use type=scratch" in str(error)
    assert "type=cache (DataWarp cache mode)" in str(rejected(["#DW jobdw capacity=1GiB type=cache"]))


def test_access_mode_with_an_nnf_type() -> None:
    error = rejected(["#DW jobdw capacity=1GiB access_mode=striped type=xfs name=fs-a"])
    assert "access_mode= belongs to the DataWarp form, whose type is scratch" in str(error)
    assert "drop access_mode= and write #DW jobdw type=xfs name=<name> capacity=<size>" in str(error)


def test_name_in_the_datawarp_form() -> None:
    error = rejected(["#DW jobdw capacity=1GiB access_mode=striped type=scratch name=fs-a"])
    assert "name= is not part of the DataWarp form" in str(error)


def test_bad_access_mode_without_rule_check() -> None:
    assert "access_mode=ldbalance must be striped, private or striped,private" in str(
        rejected(["#DW jobdw capacity=1GiB access_mode=ldbalance type=scratch"])
    )
    assert "must be striped, private or striped,private" in str(
        rejected(["#DW jobdw capacity=1GiB access_mode=striped,striped type=scratch"])
    )


def test_two_datawarp_jobdw() -> None:
    error = rejected(
        [
            "#DW jobdw capacity=1GiB access_mode=striped type=scratch",
            "#DW jobdw capacity=1GiB access_mode=private type=scratch",
        ]
    )
    assert "a job may have one DataWarp-form #DW jobdw; for both a striped and a private buffer" in str(error)


def test_mixing_grammars() -> None:
    error = rejected(
        [
            "#DW jobdw type=xfs capacity=1GiB name=fs-a",
            "#DW jobdw capacity=1GiB access_mode=striped type=scratch",
        ]
    )
    assert "this job mixes the DataWarp form of #DW jobdw" in str(error)


def test_datawarp_type_missing_on_the_site() -> None:
    site = make_site(pools={"local": PoolInfo("local", ("xfs",), GiB)})
    error = rejected(["#DW jobdw capacity=1GiB access_mode=striped type=scratch"], site)
    assert "access_mode=striped (served by type gluster) is not available here; configured types: xfs" in str(
        error
    )
    assert plan(["#DW jobdw capacity=1GiB access_mode=private type=scratch"], site)[0].fs_type == "xfs"


def test_datawarp_pool_serving_only_one_of_the_modes() -> None:
    error = rejected(["#DW jobdw capacity=1GiB access_mode=striped,private type=scratch pool=shared"])
    assert "pool=shared does not serve type xfs" in str(error)


def test_requires_not_supported_yet() -> None:
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a requires=copy-offload"])
    assert "requires=copy-offload is not supported yet" in str(error)
    assert "requires=user-container-auth is not supported yet" in str(
        rejected(["#DW persistentdw name=mine requires=user-container-auth"])
    )


def test_profiles_checked_when_the_site_lists_them() -> None:
    site = make_site(profiles=frozenset({"default", "fast"}))
    assert plan(["#DW jobdw type=xfs capacity=1GiB name=fs-a profile=fast"], site)[0].profile == "fast"
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a profile=slow"], site)
    assert "profile=slow does not exist; storage profiles: default, fast" in str(error)


def test_malformed_directive() -> None:
    error = rejected(["#BB create_persistent name=x"])
    assert "missing '#DW' prefix" in str(error)
    assert error.index == 0


def test_first_failing_directive_wins() -> None:
    error = rejected(
        ["#DW jobdw type=xfs capacity=1GiB name=fs-a", "#DW jobdw type=nfs capacity=1GiB name=fs-b"]
    )
    assert error.index == 1
    assert "type=nfs is not available here" in str(error)


# --------------------------------------------------------------------------------------
# environment()
# --------------------------------------------------------------------------------------


def test_nnf_environment() -> None:
    requests = plan(
        [
            "#DW jobdw type=xfs capacity=1GiB name=my-fs",
            "#DW jobdw type=gluster capacity=1GiB name=wide",
            "#DW jobdw type=xfs capacity=1GiB name=other",
            "#DW persistentdw name=team-data",
            "#DW persistentdw name=mine",
        ],
        SITE,
    )
    paths = {
        "job/my-fs": "/mnt/bb/0",
        "job/wide": "/mnt/bb/1",
        "job/other": "/mnt/bb/2",
        "persistent/team-data": "/mnt/bb/3",
        "persistent/mine": "/mnt/bb/4",
    }
    assert environment(requests, paths) == {
        "DW_JOB_my_fs": "/mnt/bb/0",
        "DW_JOB_XFS": "/mnt/bb/0",
        "DW_JOB_wide": "/mnt/bb/1",
        "DW_JOB_GLUSTER": "/mnt/bb/1",
        "DW_JOB_other": "/mnt/bb/2",
        "DW_JOBS": "my-fs:/mnt/bb/0,wide:/mnt/bb/1,other:/mnt/bb/2",
        "DW_PERSISTENT_team_data": "/mnt/bb/3",
        "DW_PERSISTENT_GLUSTER": "/mnt/bb/3",
        "DW_PERSISTENT_mine": "/mnt/bb/4",
        "DW_PERSISTENT_XFS": "/mnt/bb/4",
        "DW_PERSISTENTS": "team-data:/mnt/bb/3,mine:/mnt/bb/4",
    }


def test_datawarp_environment() -> None:
    requests = plan(
        [
            "#DW jobdw capacity=1GiB access_mode=striped,private type=scratch",
            "#DW persistentdw name=team-data",
        ],
        SITE,
    )
    paths = {"job/striped": "/mnt/s", "job/private": "/mnt/p", "persistent/team-data": "/mnt/t"}
    assert environment(requests, paths) == {
        "DW_JOB_STRIPED": "/mnt/s",
        "DW_JOB_PRIVATE": "/mnt/p",
        "DW_PERSISTENT_STRIPED_team_data": "/mnt/t",
    }


def test_persistent_only_job_gets_nnf_names() -> None:
    requests = plan(["#DW persistentdw name=team-data"], SITE)
    assert environment(requests, {"persistent/team-data": "/mnt/t"}) == {
        "DW_PERSISTENT_team_data": "/mnt/t",
        "DW_PERSISTENT_GLUSTER": "/mnt/t",
        "DW_PERSISTENTS": "team-data:/mnt/t",
    }


def test_create_and_destroy_give_no_variables() -> None:
    created = plan(["#DW create_persistent type=xfs capacity=1GiB name=keep"], SITE)
    destroyed = plan(["#DW destroy_persistent name=mine"], SITE)
    assert environment(created + destroyed, {}) == {}


def test_environment_without_a_path_is_a_caller_error() -> None:
    requests = plan(["#DW jobdw type=xfs capacity=1GiB name=fs-a"], SITE)
    with pytest.raises(ValueError, match="no mount path for job/fs-a"):
        environment(requests, {"job/fs-b": "/mnt/b"})


# --------------------------------------------------------------------------------------
# SiteStorage.from_objects
# --------------------------------------------------------------------------------------


def _pool(name: str, types: list[str], status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StoragePool",
        "metadata": {"name": name, **meta},
        "spec": {"fileSystemTypes": types, "granularity": "1GiB"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _instance(name: str, fs_type: str, uid: int, **extra: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "fsType": fs_type,
        "userID": uid,
        "state": "Active",
        "dwDirective": "#DW create_persistent",
    }
    spec.update(extra.pop("spec", {}))
    return {
        "apiVersion": "dataworkflowservices.github.io/v1alpha2",
        "kind": "PersistentStorageInstance",
        "metadata": {"name": name, "namespace": "default", **extra},
        "spec": spec,
    }


def test_from_objects_reads_pools() -> None:
    pools = [
        _pool(
            "local",
            ["xfs", "dir"],
            {
                "granularity": GiB,
                "totalBytes": 300 * GiB,
                "totalGranules": 300,
                "nodes": [
                    {"name": "s1", "totalGranules": 100, "freeGranules": 100, "totalBytes": 100 * GiB},
                    {"name": "s2", "totalGranules": 150, "freeGranules": 0},  # no totalBytes: from granules
                    {"name": "s3", "totalGranules": 50, "freeGranules": 0, "totalBytes": 50 * GiB},
                ],
            },
        ),
        _pool("fresh", ["gluster"]),
        _pool("old", ["raw"], deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    site = SiteStorage.from_objects(pools, [])
    assert site.pools["local"] == PoolInfo("local", ("xfs", "dir"), GiB, 300 * GiB, 150 * GiB)
    assert site.pools["fresh"] == PoolInfo("fresh", ("gluster",), GiB, None, None)
    assert "old" not in site.pools
    assert dict(site.types) == {"xfs": ("local",), "dir": ("local",), "gluster": ("fresh",)}
    assert site.profiles is None


def test_from_objects_reads_persistent_instances_and_profiles() -> None:
    instances = [
        _instance(
            "team-data",
            "gluster",
            1000,
            spec={"consumerReferences": [{"kind": "Workflow", "name": "bb12", "namespace": "default"}]},
        ),
        _instance("going", "xfs", 1000, spec={"state": "Destroying"}),
        _instance(
            "open-data", "gluster", 2000, annotations={"dataworkflowservices.github.io/ignore-uid": "True"}
        ),
    ]
    profiles = [{"metadata": {"name": "default"}}, {"metadata": {"name": "fast"}}]
    site = SiteStorage.from_objects(
        [], instances, profiles=profiles, striped_type="lustre", private_type="raw"
    )
    assert site.persistent["team-data"] == PersistentInfo("team-data", "gluster", 1000, ("bb12",))
    assert site.persistent["going"].destroying
    assert site.persistent["open-data"].shared
    assert site.profiles == frozenset({"default", "fast"})
    assert (site.striped_type, site.private_type) == ("lustre", "raw")


def test_from_objects_end_to_end() -> None:
    pools = [
        _pool(
            "local",
            ["xfs"],
            {"totalBytes": 200 * GiB, "nodes": [{"name": "s1", "totalGranules": 100, "freeGranules": 100}]},
        )
    ]
    site = SiteStorage.from_objects(pools, [_instance("mine", "xfs", 1000)])
    assert "pool local can ever provide (100GiB on its largest storage node)" in str(
        rejected(["#DW jobdw type=xfs capacity=101GiB name=fs-a"], site)
    )
    requests = plan(
        ["#DW jobdw type=xfs capacity=10GiB name=fs-a", "#DW persistentdw name=mine"], site, user_id=1000
    )
    assert environment(requests, {"job/fs-a": "/a", "persistent/mine": "/m"})["DW_JOB_XFS"] == "/a"


def test_datawarp_private_is_checked_per_node_and_striped_against_the_pool() -> None:
    error = rejected(["#DW jobdw capacity=200GiB access_mode=striped,private type=scratch"])
    assert "capacity=200GiB per compute node is more than pool local can ever provide" in str(error)
    [striped] = plan(["#DW jobdw capacity=200GiB access_mode=striped type=scratch"], SITE)
    assert striped.capacity == 200 * GiB


def test_pool_without_capacity_yet_is_not_size_checked() -> None:
    site = make_site(pools={"p": PoolInfo("p", ("gluster",), GiB, total=0, largest_node=0)})
    assert plan(["#DW jobdw type=gluster capacity=1TiB name=fs-a"], site)[0].pool is None


# --------------------------------------------------------------------------------------
# staging(): copy_in / copy_out / stage_in / stage_out
# --------------------------------------------------------------------------------------


def staged(directives: list[str]) -> list[StagingRequest]:
    return staging(directives, plan(directives, SITE, user_id=1000))


def test_nnf_copies_resolve_buffer_variables() -> None:
    copies = staged(
        [
            "#DW jobdw type=xfs capacity=1GiB name=fs-a",
            "#DW persistentdw name=team-data",
            "#DW copy_in source=/lus/in/ destination=$DW_JOB_fs_a/in",
            "#DW copy_out source=${DW_JOB_fs_a}/out/./x destination=/lus//out",
            "#DW copy_in source=/lus/ref destination=$DW_PERSISTENT_team_data",
            "#DW copy_in source=/lus/t destination=$DW_JOB_XFS/t",
        ]
    )
    assert [(c.index, c.command, c.direction, c.mode) for c in copies] == [
        (2, "copy_in", "in", "auto"),
        (3, "copy_out", "out", "auto"),
        (4, "copy_in", "in", "auto"),
        (5, "copy_in", "in", "auto"),
    ]
    assert copies[0].source == StagePath("/lus/in/", None, "/lus/in/")
    assert copies[0].destination == StagePath("in", "job/fs-a", "$DW_JOB_fs_a/in")
    assert copies[1].source == StagePath("out/x", "job/fs-a", "${DW_JOB_fs_a}/out/./x")
    assert copies[1].destination.path == "/lus/out"
    assert copies[2].destination == StagePath("", "persistent/team-data", "$DW_PERSISTENT_team_data")
    assert copies[2].buffer == "persistent/team-data"
    assert copies[3].buffer == "job/fs-a"  # DW_JOB_XFS: the job's first xfs buffer


def test_datawarp_stages_take_their_type() -> None:
    copies = staged(
        [
            "#DW jobdw capacity=1GiB access_mode=striped,private type=scratch",
            "#DW stage_in source=/lus/list destination=$DW_JOB_STRIPED type=list",
            "#DW stage_out source=$DW_JOB_PRIVATE/o destination=/lus/o type=directory",
        ]
    )
    assert [(c.command, c.mode, c.buffer) for c in copies] == [
        ("stage_in", "list", "job/striped"),
        ("stage_out", "directory", "job/private"),
    ]


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        (
            "#DW copy_in source=$DW_JOB_fs_a/x destination=/lus/x",
            "source=$DW_JOB_fs_a/x is in a burst buffer, but #DW copy_in copies into one: its source= must "
            "be a path outside the buffers",
        ),
        (
            "#DW copy_in source=/lus/x destination=/lus/y",
            "destination=/lus/y must name one of this job's burst buffers, such as "
            "destination=$DW_JOB_XFS/<path>",
        ),
        (
            "#DW copy_out source=/lus/x destination=/lus/y",
            "source=/lus/x must name one of this job's burst buffers",
        ),
        (
            "#DW copy_in source=/lus/x destination=$DW_JOB_other/x",
            "$DW_JOB_other names no burst buffer of this job (its buffers: $DW_JOB_XFS, $DW_JOB_fs_a)",
        ),
        ("#DW copy_in source=lus/x destination=$DW_JOB_fs_a", "source=lus/x must be an absolute path"),
        ("#DW copy_in source=/lus/../etc destination=$DW_JOB_fs_a", "'..' is not allowed in a path"),
        ("#DW copy_in source=/lus/x destination=$DW_JOB_fs_a/../..", "'..' is not allowed in a path"),
        (
            "#DW copy_out source=$DW_JOB_fs_a destination=$HOME/out",
            "slurmlink expands only the variables of the job's burst buffers",
        ),
        (
            "#DW copy_out source=$DW_JOB_fs_a destination=/lus/$USER",
            "only a burst buffer's variable may start a path",
        ),
        ("#DW copy_in source=/lus/x destination=$DW_JOB_fs_ax", "$DW_JOB_fs_ax names no burst buffer"),
        ("#DW copy_in source=/lus/x destination=$DW_JOB_fs_a~", "write a '/' between $DW_JOB_fs_a and"),
        ("#DW stage_in source=/lus/x destination=$DW_JOB_fs_a", "#DW stage_in needs type=: what source= is"),
    ],
)
def test_bad_copies_are_refused_with_the_reason(directive: str, message: str) -> None:
    error = rejected(["#DW jobdw type=xfs capacity=1GiB name=fs-a", directive])
    assert message in str(error)
    assert error.index == 1


def test_raw_buffers_cannot_be_copied_into() -> None:
    error = rejected(
        ["#DW jobdw type=raw capacity=1GiB name=blk", "#DW copy_in source=/lus/x destination=$DW_JOB_blk"]
    )
    assert "$DW_JOB_blk is a type=raw buffer, a block device without a file system" in str(error)


def test_copies_without_buffers_name_none() -> None:
    error = rejected(["#DW copy_in source=/lus/x destination=$DW_JOB_x"])
    assert "$DW_JOB_x names no burst buffer of this job (its buffers: none)" in str(error)


def test_a_persistent_xfs_buffer_cannot_be_staged_into() -> None:
    """Jobs using it mount it on their compute nodes; mounting it on a storage node too would corrupt it."""
    error = rejected(
        ["#DW persistentdw name=mine", "#DW copy_in source=/lus/x destination=$DW_PERSISTENT_mine"]
    )
    assert "$DW_PERSISTENT_mine is the persistent type=xfs buffer mine" in str(error)
    assert "Copy inside the job's script" in str(error) and error.index == 1
    out = rejected(
        ["#DW persistentdw name=mine", "#DW copy_out source=$DW_PERSISTENT_mine/r destination=/lus/r"]
    )
    assert "persistent type=xfs buffer mine" in str(out)
