"""The release workflow publishes exactly the images the chart and the operator default to, for both CPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modeldeploy_operator import config

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
CHART = REPO / "charts" / "modeldeploy"


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def published_images(version: str) -> set[str]:
    """What the images job pushes, its REF expanded for one matrix row at a time."""
    job = workflow()["jobs"]["images"]
    template = job["env"]["REF"]
    refs = set()
    for row in job["strategy"]["matrix"]["include"]:
        ref = template.replace("${{ needs.version.outputs.version }}", version)
        for key, value in row.items():
            ref = ref.replace(f"${{{{ matrix.{key} }}}}", value)
        assert "${{" not in ref, ref
        refs.add(ref)
    return refs


def test_a_tag_publishes_the_images_the_chart_and_the_operator_name() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = chart["appVersion"]
    assert values["image"]["tag"] == "" and values["serverImage"]["cpu"] == values["serverImage"]["gpu"] == ""
    chart_defaults = {f"{values['image']['repository']}:{version}",
                      f"{values['serverImage']['repository']}:{version}-cpu",
                      f"{values['serverImage']['repository']}:{version}"}
    assert published_images(version) == chart_defaults
    assert {config.DEFAULT_SERVER_IMAGE, config.DEFAULT_GPU_SERVER_IMAGE} < chart_defaults


def test_every_image_is_multi_arch_signed_and_has_an_sbom() -> None:
    steps = workflow()["jobs"]["images"]["steps"]
    build = next(step for step in steps if str(step.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True
    assert any(str(step.get("uses", "")).startswith("anchore/sbom-action") for step in steps)
    scripts = "\n".join(step.get("run", "") for step in steps)
    assert "cosign sign --yes" in scripts and "cosign attest --yes --type spdxjson" in scripts
    assert workflow()["jobs"]["images"]["permissions"]["id-token"] == "write"


def test_the_chart_goes_to_the_oci_registry_and_the_tag_must_be_the_version() -> None:
    jobs = workflow()["jobs"]
    chart_script = "\n".join(step.get("run", "") for step in jobs["chart"]["steps"])
    assert 'helm push "dist/modeldeploy-${VERSION}.tgz" "oci://${REGISTRY}/${OWNER}/charts"' in chart_script
    assert workflow()["env"] == {"REGISTRY": "ghcr.io", "OWNER": "modeldeploy"}
    version_script = "\n".join(step.get("run", "") for step in jobs["version"]["steps"])
    assert '[ "v${version}" != "${GITHUB_REF_NAME}" ]' in version_script
    assert "hack/set_version.py --check" in version_script
    # PyYAML reads the bare key `on` as True.
    assert workflow()[True] == {"push": {"tags": ["v*"]}}
