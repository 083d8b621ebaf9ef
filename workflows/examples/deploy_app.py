"""``deploy-app``: planner -> architecture -> terraform <-> validation -> (cost approval) -> deployment (dry run).

Every agent step shares the run's memory thread: the planner's requirements are in the thread when the
architect designs, and the deployer sees the whole conversation. ``chat-flow`` is the smallest agent
workflow: one agent answering with the thread's memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field

from ..agent import Agent, AgentResult
from ..agent_step import AgentText, agent_step, run_thread
from ..context import StepContext
from ..errors import ModelError
from ..step import step
from ..workflow import Workflow
from .approval import Decision, Rejected
from .terraform import ArchitectureSpec, complete_spec, render_terraform, validate_terraform, write_files

T = TypeVar("T", bound=BaseModel)

# -- models -------------------------------------------------------------------------------------------


class DeployRequest(BaseModel):
    request: str = Field("a Postgres-backed API for 10k users", description="What to build and deploy.")
    cost_threshold: float = Field(200.0, description="Monthly USD above which a person must approve.")


class Requirements(BaseModel):
    summary: str
    requirements: list[str]
    expected_users: int = Field(1000, ge=1)
    needs_database: bool = True


class TerraformInput(BaseModel):
    spec: ArchitectureSpec
    findings: list[str] = []
    iteration: int = 0


class Validation(BaseModel):
    spec: ArchitectureSpec
    workspace: str
    files: list[str]
    findings: list[str]
    valid: bool
    iteration: int


class CostPayload(BaseModel):
    title: str
    estimated_monthly_cost: float
    threshold: float
    components: list[str]


class ApprovedPlan(BaseModel):
    spec: ArchitectureSpec
    workspace: str
    files: list[str]
    estimated_monthly_cost: float
    approved_by: str | None = None


class DeployPlan(BaseModel):
    summary: str
    steps: list[str]


class Deployment(BaseModel):
    dry_run: bool = True
    workspace: str
    summary: str
    steps: list[str]
    estimated_monthly_cost: float


# -- agents -------------------------------------------------------------------------------------------

planner = Agent(
    "planner",
    "You turn a request for an application into concrete requirements: a summary, a list of requirements, "
    "the expected number of users, and whether it needs a database.",
)
architect = Agent(
    "architect",
    "You design cloud architectures. Use the requirements recorded earlier in this thread. Answer with a "
    "region and components (compute, database, cache, storage, network; small/medium/large; counts).",
)
terraformer = Agent(
    "terraform",
    "You review Terraform for an architecture spec and say in one paragraph what the files provision.",
)
deployer = Agent(
    "deployer",
    "You plan deployments. This is a dry run: never claim anything was deployed. List the steps you would "
    "take, using what the thread says about requirements, architecture, validation and approval.",
)
deploy_assistant = Agent(
    "deploy-assistant",
    "You answer questions in the Slack thread of a deploy-app run. The thread holds the planner's "
    "requirements, the architecture, validation results, approvals and the deployment plan; refer to them.",
)

# -- steps --------------------------------------------------------------------------------------------

@step(id="plan", input=DeployRequest, output=Requirements, metadata={"agent": "planner", "post_output": True})
async def plan(ctx: StepContext[DeployRequest]) -> Requirements:
    """Turn the request into requirements and record them in the thread."""
    result = await planner.generate(
        f"Write the requirements for: {ctx.input.request}", output=Requirements, thread=run_thread(ctx),
        resource=ctx.resource_id, run_id=ctx.run_id, path=ctx.path, author="workflow",
    )
    req = answer(result)
    users = users_in(ctx.input.request)
    if users is not None:
        req = req.model_copy(update={"expected_users": users})
    if re.search(r"postgres|mysql|database|\bdb\b|sql", ctx.input.request, re.I):
        req = req.model_copy(update={"needs_database": True})
    memory = run_thread(ctx)
    if memory is not None:
        await memory.add("assistant", f"Requirements for '{ctx.input.request}': {req.expected_users} expected users; "
                         f"database needed: {'yes' if req.needs_database else 'no'}; " + "; ".join(req.requirements),
                         author="planner")
    return req


def users_in(text: str) -> int | None:
    """``10k users`` -> 10000; ``2,500 users`` -> 2500."""
    match = re.search(r"(\d[\d,.]*)\s*([km])?\s*(?:users|people|customers|requests)", text, re.I)
    if match is None:
        return None
    number = float(match.group(1).replace(",", ""))
    scale = {"k": 1_000, "m": 1_000_000}.get((match.group(2) or "").lower(), 1)
    return max(1, int(number * scale))


@step(id="architecture", input=Requirements, output=ArchitectureSpec, metadata={"agent": "architect", "post_output": True})
async def architecture(ctx: StepContext[Requirements]) -> ArchitectureSpec:
    """Design the architecture for the requirements in the thread."""
    req = ctx.input
    result = await architect.generate(
        "Design the architecture for the requirements recorded in this thread: " + req.summary,
        output=ArchitectureSpec, thread=run_thread(ctx), resource=ctx.resource_id, run_id=ctx.run_id,
        path=ctx.path, author="workflow",
    )
    spec = complete_spec(answer(result), needs_database=req.needs_database, expected_users=req.expected_users)
    memory = run_thread(ctx)
    if memory is not None:
        parts = ", ".join(f"{c.count}x {c.kind} {c.name} ({c.size})" for c in spec.components)
        await memory.add("assistant", f"Architecture in {spec.region}: {parts}. Estimated cost "
                         f"${spec.estimated_monthly_cost:.2f}/month.", author="architect")
    return spec


@step(id="terraform", input=TerraformInput, output=TerraformInput)
async def terraform(ctx: StepContext[TerraformInput]) -> TerraformInput:
    """Write the .tf files into the run's workspace folder, addressing earlier findings."""
    folder = workspace(ctx.run_id)
    write_files(folder, render_terraform(ctx.input.spec, ctx.input.findings))
    await terraformer.generate(
        f"Terraform written to {folder} for: {ctx.input.spec.summary}. Findings addressed: "
        + ("; ".join(ctx.input.findings) or "none"),
        thread=run_thread(ctx), resource=ctx.resource_id, run_id=ctx.run_id, path=ctx.path, author="workflow",
    )
    return ctx.input


@step(id="validate", input=TerraformInput, output=Validation)
async def validate(ctx: StepContext[TerraformInput]) -> Validation:
    """Check syntax and the spec's constraints; findings go back to terraform."""
    folder = workspace(ctx.run_id)
    findings = validate_terraform(folder, ctx.input.spec)
    memory = run_thread(ctx)
    if memory is not None:
        verdict = "valid" if not findings else "invalid: " + "; ".join(findings)
        await memory.add("assistant", f"Terraform validation (round {ctx.input.iteration + 1}): {verdict}.",
                         author="validation")
    return Validation(spec=ctx.input.spec, workspace=str(folder), files=sorted(p.name for p in folder.glob("*.tf")),
                      findings=findings, valid=not findings, iteration=ctx.input.iteration + 1)


@step(id="approve-cost", input=Validation, output=ApprovedPlan, suspend=CostPayload, resume=Decision)
async def approve_cost(ctx: StepContext[Validation]) -> ApprovedPlan:
    """Ask a person when the monthly cost is above the threshold."""
    threshold = float((ctx.workflow_input or {}).get("cost_threshold", DeployRequest().cost_threshold))
    cost = ctx.input.spec.estimated_monthly_cost
    approved_by = None
    if cost > threshold:
        decision: Decision = await ctx.suspend(CostPayload(
            title=f"Estimated cost ${cost:.2f}/month is above ${threshold:.2f}",
            estimated_monthly_cost=cost, threshold=threshold,
            components=[f"{c.count}x {c.kind} {c.name} ({c.size})" for c in ctx.input.spec.components],
        ))
        if not decision.approved:
            raise Rejected(f"Rejected by {decision.by or 'someone'}" + (f": {decision.reason}" if decision.reason else "") + ".")
        approved_by = decision.by
    return ApprovedPlan(spec=ctx.input.spec, workspace=ctx.input.workspace, files=ctx.input.files,
                        estimated_monthly_cost=cost, approved_by=approved_by)


@step(id="deploy", input=ApprovedPlan, output=Deployment, metadata={"agent": "deployer", "post_output": True})
async def deploy(ctx: StepContext[ApprovedPlan]) -> Deployment:
    """A dry run: plan the deployment and record the plan in memory; no cloud is called."""
    result = await deployer.generate(
        f"Plan the deployment (dry run) of the Terraform in {ctx.input.workspace} "
        f"({', '.join(ctx.input.files)}), estimated ${ctx.input.estimated_monthly_cost:.2f}/month.",
        output=DeployPlan, thread=run_thread(ctx), resource=ctx.resource_id, run_id=ctx.run_id, path=ctx.path,
        author="workflow",
    )
    plan_ = answer(result)
    steps = ["terraform init", "terraform plan -out=tfplan", *plan_.steps, "terraform apply tfplan (skipped: dry run)"]
    memory = run_thread(ctx)
    if memory is not None:
        await memory.add("assistant", "Deployment plan (dry run, nothing deployed): " + "; ".join(steps), author="deployer")
    return Deployment(workspace=ctx.input.workspace, summary=plan_.summary, steps=steps,
                      estimated_monthly_cost=ctx.input.estimated_monthly_cost)


def answer(result: AgentResult[T]) -> T:
    """The structured answer of an agent call made with ``output=`` (the agent validated it)."""
    if result.output is None:
        raise ModelError("The agent gave no structured answer.")
    return result.output


def workspace(run_id: str) -> Path:
    """The run's own folder for generated files (``THREADFLOW_WORKSPACE``, default ./threadflow-workspace)."""
    return Path(os.environ.get("THREADFLOW_WORKSPACE", "threadflow-workspace")) / run_id


terraform_round = (
    Workflow(id="terraform-round", input=TerraformInput, output=Validation)
    .then(terraform)
    .then(validate)
    .commit()
)


deploy_app = (
    Workflow(id="deploy-app", input=DeployRequest, output=Deployment, chat_agent=deploy_assistant,
             description="Plans, designs, writes and validates Terraform, asks for cost approval, plans a dry-run deploy.",
             title="Deploy an app")
    .then(plan)
    .then(architecture)
    .map(lambda spec: TerraformInput(spec=spec), output=TerraformInput, id="prepare-terraform")
    .dountil(terraform_round, lambda v: v.valid, max_iterations=3)
    .then(approve_cost)
    .then(deploy)
    .commit()
)

# -- chat-flow ----------------------------------------------------------------------------------------


class ChatInput(BaseModel):
    prompt: str = Field("Hello!", description="What to ask the agent.")


chat_agent = Agent("chat", "You are a helpful assistant. Use the thread's earlier messages when relevant.")

chat_flow = (
    Workflow(id="chat-flow", input=ChatInput, output=AgentText, description="One agent answering with thread memory.",
             title="Ask an agent")
    .then(agent_step(chat_agent, id="answer", input=ChatInput, prompt="{prompt}"))
    .commit()
)
