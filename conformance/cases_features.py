"""The features document, and whether the runtime takes a bundle written for runtime-spec 1.3.0."""

from __future__ import annotations

import json
import re

from conformance.harness import CaseContext, CaseFailed, CaseSkipped, case, check

SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
HOOK_KINDS = {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}


@case("config_accepts_oci_1_3_0", "config.md#specification-version",
      "a runtime implementing 1.3.0 accepts a bundle whose ociVersion is 1.3.0")
def config_accepts_oci_1_3_0(ctx: CaseContext) -> None:
    ctx.config["ociVersion"] = "1.3.0"
    result = ctx.run(["true"])
    check(result.returncode == 0, f"a 1.3.0 bundle was refused: {result.describe()}")


@case("features_document", "features.md",
      "`features` prints JSON with SemVer ociVersionMin and ociVersionMax, min not above max")
def features_document(ctx: CaseContext) -> None:
    result = ctx.call(["features"])
    if result.returncode != 0:
        raise CaseSkipped(f"the runtime has no features command ({result.describe()})")
    try:
        features = json.loads(result.stdout)
    except ValueError:
        check(False, f"features printed no JSON: {result.stdout[:120]!r}")
    check(isinstance(features, dict), "the features document is not a JSON object")
    versions = []
    for key in ("ociVersionMin", "ociVersionMax"):
        value = features.get(key)
        match = SEMVER.match(value) if isinstance(value, str) else None
        if match is None:
            raise CaseFailed(f"{key} is {value!r}, not a SemVer string")
        versions.append(tuple(int(part) for part in match.groups()))
    check(versions[0] <= versions[1], f"ociVersionMin {features['ociVersionMin']} is above ociVersionMax")
    hooks = features.get("hooks")
    if hooks is not None:
        check(isinstance(hooks, list) and set(hooks) <= HOOK_KINDS, f"hooks lists unknown kinds: {hooks!r}")
