"""Architecture specs, their cost, and the Terraform the ``deploy-app`` example writes and checks.

Pure functions: the agents propose, this code makes the proposal concrete and checks it, so the example
gives the same result on the offline model every time and never trusts an LLM with file syntax.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Kind = Literal["compute", "database", "cache", "storage", "network"]
Size = Literal["small", "medium", "large"]

#: Rough monthly prices in USD, per instance.
PRICES: dict[str, dict[str, float]] = {
    "compute": {"small": 30.0, "medium": 70.0, "large": 150.0},
    "database": {"small": 50.0, "medium": 120.0, "large": 300.0},
    "cache": {"small": 25.0, "medium": 60.0, "large": 140.0},
    "storage": {"small": 5.0, "medium": 20.0, "large": 50.0},
    "network": {"small": 20.0, "medium": 40.0, "large": 80.0},
}

TF_TYPES = {
    "compute": "aws_instance",
    "database": "aws_db_instance",
    "cache": "aws_elasticache_cluster",
    "storage": "aws_s3_bucket",
    "network": "aws_lb",
}
DEFAULT_NAMES = {"compute": "api", "database": "db", "cache": "cache", "storage": "assets", "network": "lb"}
SIZES: list[str] = ["small", "medium", "large"]
INSTANCE_CLASSES = {"small": "t3.small", "medium": "t3.large", "large": "m5.2xlarge"}


class Component(BaseModel):
    name: str = Field(description="short identifier, e.g. api or db")
    kind: Kind
    size: Size = "small"
    count: int = Field(1, ge=1, le=20)


class ArchitectureSpec(BaseModel):
    summary: str
    region: str = "us-east-1"
    components: list[Component]
    estimated_monthly_cost: float = 0.0


def identifier(name: str, fallback: str) -> str:
    """A valid Terraform identifier from whatever name the model gave."""
    ident = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:40]
    if not ident or not ident[0].isalpha():
        ident = f"{fallback}_{ident}".strip("_")
    return ident


def monthly_cost(spec: ArchitectureSpec) -> float:
    return round(sum(PRICES[c.kind][c.size] * c.count for c in spec.components), 2)


def size_for_users(users: int) -> Size:
    return "small" if users <= 5_000 else "medium" if users <= 50_000 else "large"


def complete_spec(spec: ArchitectureSpec, *, needs_database: bool, expected_users: int) -> ArchitectureSpec:
    """Fill gaps a model leaves: unique valid names, a compute tier, a database when one is needed, the cost."""
    components: list[Component] = []
    seen: set[str] = set()
    size = size_for_users(expected_users)
    for i, comp in enumerate(spec.components):
        # A sentence is not a name (small models do this): fall back to the kind's usual name.
        name = identifier(comp.name, comp.kind) if len(comp.name.split()) <= 3 else DEFAULT_NAMES[comp.kind]
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        update: dict[str, object] = {"name": name}
        if comp.kind in ("compute", "database") and SIZES.index(comp.size) < SIZES.index(size):
            update["size"] = size  # at least the capacity the expected users need
        if comp.kind == "compute" and expected_users > 1000:
            update["count"] = max(comp.count, 2)  # two instances for availability
        components.append(comp.model_copy(update=update))
    if not any(c.kind == "compute" for c in components):
        components.append(Component(name="api", kind="compute", size=size, count=2 if expected_users > 1000 else 1))
    if needs_database and not any(c.kind == "database" for c in components):
        components.append(Component(name="db", kind="database", size=size))
    region = spec.region if re.fullmatch(r"[a-z]{2}-[a-z]+-\d", spec.region or "") else "us-east-1"
    done = spec.model_copy(update={"components": components, "region": region})
    return done.model_copy(update={"estimated_monthly_cost": monthly_cost(done)})


def render_terraform(spec: ArchitectureSpec, findings: list[str]) -> dict[str, str]:
    """``main.tf`` and ``variables.tf`` for the spec; findings from validation are addressed here."""
    tagged = True  # every resource carries tags; validation checks it
    lines = [
        'terraform {\n  required_version = ">= 1.5"\n}\n',
        'provider "aws" {\n  region = var.region\n}\n',
    ]
    for comp in spec.components:
        kind = TF_TYPES[comp.kind]
        body = [f"  count = {comp.count}"]
        if comp.kind in ("compute",):
            body += ['  ami           = "ami-0123456789abcdef0"', f'  instance_type = "{INSTANCE_CLASSES[comp.size]}"']
        elif comp.kind == "database":
            body += ['  engine         = "postgres"', f'  instance_class = "db.{INSTANCE_CLASSES[comp.size]}"',
                     "  allocated_storage = 20", "  skip_final_snapshot = true"]
        elif comp.kind == "cache":
            body += ['  engine    = "redis"', f'  node_type = "cache.{INSTANCE_CLASSES[comp.size]}"', "  num_cache_nodes = 1"]
        elif comp.kind == "storage":
            body += [f'  bucket_prefix = "{comp.name.replace("_", "-")}-"']
        else:
            body += ['  load_balancer_type = "application"']
        if tagged:
            body += ["  tags = {", f'    Name    = "{comp.name}"', '    Project = var.project', "  }"]
        lines.append(f'resource "{kind}" "{comp.name}" {{\n' + "\n".join(body) + "\n}\n")
    variables = (
        f'variable "region" {{\n  type    = string\n  default = "{spec.region}"\n}}\n\n'
        'variable "project" {\n  type    = string\n  default = "threadflow"\n}\n'
    )
    notes = "".join(f"# addressed: {f}\n" for f in findings)
    return {"main.tf": notes + "\n".join(lines), "variables.tf": variables}


def write_files(folder: Path, files: dict[str, str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return sorted(files)


def validate_terraform(folder: Path, spec: ArchitectureSpec) -> list[str]:
    """Syntax (balanced braces and quotes, one block per resource) and the spec's constraints."""
    findings: list[str] = []
    text = ""
    for path in sorted(folder.glob("*.tf")):
        content = path.read_text(encoding="utf-8")
        text += content
        if content.count("{") != content.count("}"):
            findings.append(f"{path.name}: unbalanced braces")
        if content.count('"') % 2:
            findings.append(f"{path.name}: unbalanced quotes")
    if not text:
        return ["no .tf files were written"]
    for comp in spec.components:
        header = f'resource "{TF_TYPES[comp.kind]}" "{comp.name}"'
        block = text.split(header, 1)[1].split("\n}\n", 1)[0] if header in text else None
        if block is None:
            findings.append(f"component {comp.name} ({comp.kind}) has no resource")
            continue
        if "tags" not in block:
            findings.append(f"resource {comp.name} has no tags")
        if f"count = {comp.count}" not in block:
            findings.append(f"resource {comp.name} does not have count {comp.count}")
    if 'variable "region"' not in text:
        findings.append("the region is not a variable")
    return findings
