"""Two-stage Diff3M training (image-only DDPM, then PCM + IECA with frozen parts): EMA, AdamW, resumable."""

from __future__ import annotations

import copy
import csv
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diff3m.models import checkpoint
from diff3m.models.calibrate import STATS_IMAGES, calibrate
from diff3m.models.data import CxrSample
from diff3m.models.ehr import EhrEncoder
from diff3m.models.fields import DEFAULT_REGISTRY, FieldRegistry
from diff3m.models.inference import pick_device
from diff3m.models.network import Diff3MNet
from diff3m.models.preprocess import PreprocessError, load_image
from diff3m.models.profiles import Profile, get_profile
from diff3m.models.schedule import DiffusionSchedule, ScheduleConfig
from diff3m.models.timestep_draw import TimestepDraw, check_draw, format_draw, parse_draw, sample_timesteps

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.csv"


@dataclass(frozen=True)
class TrainOptions:
    """What a training run does; stored with its resumable state."""

    profile: str
    steps: int  # total optimizer steps, both stages
    stage1_steps: int  # image-only DDPM steps (the rest is stage 2)
    use_ehr: bool
    seed: int
    batch_size: int
    lr: float
    weight_decay: float
    field_dropout: float  # chance a field is hidden in stage 2 (trains the missing embeddings)
    stage2_ema_restart: bool  # the EMA warm-up starts again with stage 2 (no stage-1 weights in it)
    ehr_lr_scale: float  # stage 2: the EHR pathway's learning rate as a multiple of ``lr``
    stage2_max_noise_level: int | None  # stage 2 trains at timesteps below this (None: the whole schedule)
    stage2_masked_branch: bool  # stage 2 trains the masked branch with the published loss (False: eps only)
    stage2_draw: str | None  # stage 2's timestep bands (timestep_draw; None: uniform below the max level)


# what the arms forked from one shared stage 1 (``train(stage1_from=...)``) may differ in
STAGE2_OPTIONS = (
    "use_ehr",
    "stage2_ema_restart",
    "ehr_lr_scale",
    "stage2_max_noise_level",
    "stage2_masked_branch",
    "stage2_draw",
)
# options added after states were first written, with what a state that predates one was trained with
PREDATING: dict[str, Any] = {
    "stage2_ema_restart": False,
    "ehr_lr_scale": 1.0,
    "stage2_max_noise_level": None,
    "stage2_masked_branch": True,
    "stage2_draw": None,
}


@dataclass
class TrainingData:
    """Training images on the model grid and their encoded EHR tokens."""

    images: torch.Tensor  # float16 [N, 1, S, S]
    values: torch.Tensor  # float32 [N, n_tokens]
    present: torch.Tensor  # bool [N, n_tokens]
    token_field: torch.Tensor  # long [n_tokens]: which field each token belongs to
    skipped: int

    def to(self, device: torch.device) -> TrainingData:
        """The same data on ``device`` (kept there for the whole run: no copy per step)."""
        return TrainingData(
            self.images.to(device),
            self.values.to(device),
            self.present.to(device),
            self.token_field.to(device),
            self.skipped,
        )


def training_samples(samples: Sequence[CxrSample]) -> list[CxrSample]:
    """The normal studies of the train split (one-class training); all normals if no split says train."""
    normals = [s for s in samples if s.normal]
    train = [s for s in normals if s.split == "train"]
    return train or normals


def prepare_data(samples: Sequence[CxrSample], encoder: EhrEncoder, size: int) -> TrainingData:
    """Load every image onto the model grid and encode its EHR (unreadable images are skipped)."""
    images, kept = [], []
    skipped = 0
    for s in samples:
        try:
            grid, _ = load_image(s.path).to_grid(size)
        except (PreprocessError, OSError) as err:
            skipped += 1
            log.warning("skipping unreadable training image of study %s: %s", s.study_id, err)
            continue
        images.append(torch.from_numpy(grid).to(torch.float16))
        kept.append(s)
    if not kept:
        raise ValueError("no readable normal training images")
    values, present = encoder.encode_batch([s.values for s in kept])
    token_field = []
    for i, spec in enumerate(encoder.registry.fields):
        token_field.extend([i] * (1 if spec.kind == "numeric" else len(spec.categories)))
    return TrainingData(
        torch.stack(images)[:, None],
        torch.from_numpy(values),
        torch.from_numpy(present),
        torch.tensor(token_field, dtype=torch.long),
        skipped,
    )


def train(
    samples: Sequence[CxrSample],
    out_dir: str | Path,
    profile: str | Profile = "demo",
    steps: int = 1000,
    use_ehr: bool = True,
    seed: int = 0,
    *,
    stage1_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    field_dropout: float = 0.1,
    save_every: int = 500,
    log_every: int | None = None,
    calibration_images: int = 16,
    registry: FieldRegistry = DEFAULT_REGISTRY,
    progress: bool = True,
    resume: bool = True,
    stage1_from: str | Path | None = None,
    stage2_ema_restart: bool | None = None,
    ehr_lr_scale: float | None = None,
    stage2_max_noise_level: int | None = None,
    stage2_masked_branch: bool | None = None,
    stage2_draw: str | None = None,
) -> Path:
    """Train on the normal studies of ``samples`` and write a checkpoint directory to ``out_dir``.

    ``stage1_steps`` (default half of ``steps``) train the image-only DDPM; the remaining steps
    train the masked branch and IECA with the published loss. Re-running with the same options
    and a larger ``steps`` resumes from ``out_dir/train_state.pt``.

    ``stage1_from`` starts a new run from another run's finished stage 1 (its folder). Stage 1 never
    sees the EHR, so the EHR and image-only arms of an ablation can share it and differ only in stage 2.

    ``stage2_ema_restart`` starts the EMA warm-up again when stage 2 begins: the averaged weights then
    hold only stage-2 weights (the warm-up weighs the latest most: after n stage-2 steps, 61 % of the
    average comes from the last n / 10 of them and 87 % from the last n / 5, until the decay cap is reached),
    instead of carrying the stage-1 weights for about ``1 / (1 - ema_decay)`` steps (False: the EMA runs
    on). ``None``: a resumed run keeps its own setting; a new run or a forked arm restarts.

    ``ehr_lr_scale`` multiplies the learning rate of the EHR pathway (the field tokens,
    ``Diff3MNet.ehr_pathway``) in stage 2; the rest trains at ``lr``. 1 is the published recipe. The
    image-only arm never uses those parameters, so an ablation's arms stay at an equal budget.
    ``None``: a resumed run keeps its own setting; a new run or a forked arm takes 1.

    ``stage2_max_noise_level`` N: stage 2 draws its timesteps from 0 .. N-1 instead of the whole schedule,
    so its training lands where the scorer works (a noise level L uses the network at t < L). The
    checkpoint records N and refuses to score at a noise level above it. ``None``: a resumed run keeps
    its own setting; a new run or a forked arm trains on the whole schedule, as published.

    ``stage2_masked_branch`` False: stage 2 trains the epsilon UNet and the EHR conditioning on the noise
    loss alone and leaves the masked (PCM) branch as stage 2 found it, about 3x fewer operations per step.
    Only the published ``inversion`` encoding uses that branch, so the checkpoint records it untrained and
    scores with the ``noise`` encoding only (the profile's must be ``noise``). ``None``: a resumed run keeps
    its own setting; a new run or a forked arm trains the branch, as published.

    ``stage2_draw`` (``timestep_draw``, e.g. ``"0.5@49,0.5@100-199"``): stage 2 draws its timesteps from
    these weighted bands instead of uniformly; they must lie below ``stage2_max_noise_level`` when that is
    set, and the checkpoint records the top band's end + 1 as its highest level otherwise. ``None``: a
    resumed run keeps its own setting; a new run or a forked arm draws uniformly.
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if ehr_lr_scale is not None and not ehr_lr_scale > 0:
        raise ValueError(f"ehr_lr_scale must be positive, not {ehr_lr_scale}")
    if stage2_max_noise_level is not None and not 2 <= stage2_max_noise_level <= prof.timesteps:
        raise ValueError(
            f"stage2_max_noise_level must be within 2..{prof.timesteps}, not {stage2_max_noise_level}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if log_every is None:  # reading the loss waits for the device: on a GPU, log every 10th step
        log_every = 10 if dev.type == "cuda" else 1
    started = time.time()
    state_path = out / STATE_FILE
    state = (
        torch.load(state_path, map_location=dev, weights_only=False)
        if resume and state_path.is_file()
        else None
    )
    forked = False
    if state is None and stage1_from is not None:
        state, forked = _stage1_state(Path(stage1_from), dev), True
    stored = {**PREDATING, **state["options"]} if state else {}
    if stage1_steps is None:
        stage1_steps = stored["stage1_steps"] if state else steps // 2
    if stage2_ema_restart is None:
        stage2_ema_restart = bool(stored["stage2_ema_restart"]) if state and not forked else True
    if ehr_lr_scale is None:
        ehr_lr_scale = float(stored["ehr_lr_scale"]) if state and not forked else 1.0
    if stage2_max_noise_level is None:
        stage2_max_noise_level = stored["stage2_max_noise_level"] if state and not forked else None
    elif stage2_max_noise_level == prof.timesteps:  # the whole schedule, stored as None
        stage2_max_noise_level = None
    if stage2_masked_branch is None:
        stage2_masked_branch = bool(stored["stage2_masked_branch"]) if state and not forked else True
    if stage2_draw is None:
        stage2_draw = stored["stage2_draw"] if state and not forked else None
    draw = None
    if stage2_draw is not None:
        draw = check_draw(parse_draw(stage2_draw), stage2_max_noise_level or prof.timesteps)
        stage2_draw = format_draw(draw)
    if not stage2_masked_branch and prof.encoding == "inversion":
        raise ValueError(
            f"profile {prof.name} scores with the inversion encoding, which needs the masked branch: "
            "train it (stage2_masked_branch) or use a profile with the noise encoding"
        )
    s1 = max(0, min(stage1_steps, steps))
    opts = TrainOptions(
        prof.name,
        steps,
        s1,
        use_ehr,
        seed,
        batch_size or prof.batch_size,
        lr or prof.lr,
        prof.weight_decay,
        field_dropout,
        stage2_ema_restart,
        ehr_lr_scale,
        stage2_max_noise_level,
        stage2_masked_branch,
        stage2_draw,
    )
    if state:
        expected = {**asdict(opts), "steps": stored["steps"]}
        if forked:  # stage 1 never sees the stage-2 options: the arms may differ in them
            expected.update(steps=s1, **{name: stored[name] for name in STAGE2_OPTIONS})
        if stored != expected and forked:
            raise ValueError(
                f"stage 1 in {stage1_from} was trained with other options {state['options']} "
                f"(a shared stage 1 needs the same profile, seed, batch, lr and stage1_steps={s1})"
            )
        if stored != expected:
            raise ValueError(
                f"{state_path} was written with other options {state['options']}; "
                "use another --out or delete it"
            )

    chosen = training_samples(samples)
    encoder = (
        EhrEncoder.from_dict(state["encoder"])
        if state
        else EhrEncoder(registry).fit(s.values for s in chosen)
    )
    data = prepare_data(chosen, encoder, prof.image_size).to(dev)
    schedule = DiffusionSchedule(ScheduleConfig(prof.timesteps, prof.beta_start, prof.beta_end), dev)

    torch.manual_seed(seed)
    net = Diff3MNet(prof, encoder.n_tokens, encoder.group_indices()).to(dev)
    ema = copy.deepcopy(net).requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)
    step, stage = 0, 1
    opt_state = None
    if state:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        rng.set_state(state["rng"])
        step, stage, opt_state = state["step"], state["stage"], state["opt"]
        log.info("resuming at step %d of %d", step, steps)
    if stage == 2:
        _freeze_for_stage2(net, opts)
    opt = _optimizer(net, stage, opts, dev)
    if opt_state is not None:
        opt.load_state_dict(opt_state)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    log_path = out / LOG_FILE
    new_log = not log_path.exists() or step == 0
    log_file = log_path.open("w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "stage", "loss", "loss_eps", "loss_gen", "lr", "seconds"])
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"train {prof.name}", unit="step")
    last_loss = float("nan")
    net.train()
    try:
        while step < steps:
            if stage == 1 and step >= s1:
                stage = 2
                net.init_masked_branch()
                ema.init_masked_branch()
                _freeze_for_stage2(net, opts)
                opt = _optimizer(net, stage, opts, dev)
            losses = _train_step(net, schedule, data, opts, draw, stage, rng, dev, autocast)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
            opt.step()
            ema_step = step - s1 if stage == 2 and opts.stage2_ema_restart else step
            _ema_update(ema, net, prof.ema_decay, ema_step)
            step += 1
            if step % log_every == 0 or step == steps:
                last_loss = float(losses["loss"].detach())
                writer.writerow(
                    [
                        step,
                        stage,
                        f"{last_loss:.6f}",
                        f"{float(losses['eps']):.6f}",
                        f"{float(losses['gen']):.6f}",
                        opts.lr,
                        f"{time.time() - started:.1f}",
                    ]
                )
                bar.set_postfix(stage=stage, loss=f"{last_loss:.4f}")
            bar.update(1)
            if step % save_every == 0 and step < steps:
                _save_state(state_path, net, ema, opt, rng, step, stage, opts, encoder)
    finally:
        bar.close()
        log_file.close()
    _save_state(state_path, net, ema, opt, rng, step, stage, opts, encoder)

    top = opts.stage2_max_noise_level or (draw[-1].last + 1 if draw else None)
    trained_max = top if steps > s1 else None  # stage 1 trains every timestep
    masked_branch = steps > s1 and opts.stage2_masked_branch
    encoding = prof.encoding if masked_branch else "noise"  # a stage-1 run of an inversion profile, too
    config = checkpoint.CheckpointConfig(
        profile=prof,
        ehr=encoder,
        schedule=schedule.config,
        steps=prof.steps,
        noise_level=min(prof.noise_level, trained_max or prof.timesteps),
        max_noise_level=trained_max,
        masked_branch=masked_branch,
        encoding=encoding,
        draws=prof.draws,
        use_ehr=use_ehr,
        score_name=prof.score_name,
    )
    meta = {
        "options": asdict(opts),
        "n_train": int(data.images.shape[0]),
        "skipped_images": data.skipped,
        "final_loss": last_loss if last_loss == last_loss else None,  # NaN (no step ran) is not JSON
        "seconds": round(time.time() - started, 1),
        "device": str(dev),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "stages_trained": 2 if steps > s1 else 1,
    }
    checkpoint.save(out, ema, config, meta)
    needs_stats = prof.score_name in checkpoint.NEEDS_STATS
    calibrate(
        out,
        samples,
        chosen,
        str(dev),
        stats_images=STATS_IMAGES if needs_stats else 0,
        threshold_images=calibration_images,
    )
    return out


def seconds_per_step(log: Path, first: int, last: int) -> float:
    """Mean seconds per step between logged steps ``first`` and ``last`` of a run's train_log.csv."""
    with log.open(newline="") as f:
        at = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    return (at[last] - at[first]) / (last - first)


def _train_step(
    net: Diff3MNet,
    schedule: DiffusionSchedule,
    data: TrainingData,
    opts: TrainOptions,
    draw: TimestepDraw | None,
    stage: int,
    rng: torch.Generator,
    dev: torch.device,
    autocast: torch.autocast,
) -> dict[str, torch.Tensor]:
    n = data.images.shape[0]
    idx = torch.randint(n, (opts.batch_size,), generator=rng).to(data.images.device)
    x0 = data.images[idx].to(dev, torch.float32)
    if stage == 2 and draw:
        t = sample_timesteps(draw, opts.batch_size, rng).to(dev)
    else:
        top = schedule.timesteps
        if stage == 2 and opts.stage2_max_noise_level:
            top = opts.stage2_max_noise_level
        t = torch.randint(top, (opts.batch_size,), generator=rng).to(dev)
    noise = torch.randn(x0.shape, generator=rng).to(dev)
    x_t = schedule.q_sample(x0, t, noise)
    zero = torch.zeros((), device=dev)
    with autocast:
        if stage == 1:  # image-only DDPM
            eps, _ = net(x_t, t, None, with_gen=False)
            loss_eps = F.mse_loss(eps.float(), noise)
            return {"loss": loss_eps, "eps": loss_eps.detach(), "gen": zero}
        cond = None
        if opts.use_ehr:
            present = data.present[idx]
            if opts.field_dropout > 0:
                n_fields = int(data.token_field.max()) + 1
                hide = torch.rand((opts.batch_size, n_fields), generator=rng) < opts.field_dropout
                present = present & ~hide.to(present.device)[:, data.token_field]
            cond = net.condition(x0, data.values[idx].to(dev), present.to(dev))
        eps, gen = net(x_t, t, cond, with_gen=opts.stage2_masked_branch)
        loss_eps = F.mse_loss(eps.float(), noise)
        if gen is None:  # the masked branch is left out: the noise loss alone
            return {"loss": loss_eps, "eps": loss_eps.detach(), "gen": zero}
        loss_gen = F.mse_loss(gen.float(), x_t)
    return {"loss": 0.5 * loss_eps + 0.5 * loss_gen, "eps": loss_eps.detach(), "gen": loss_gen.detach()}


def _stage1_state(run_dir: Path, dev: torch.device) -> dict[str, Any]:
    """The resumable state of a run that has finished stage 1 and not begun stage 2."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise ValueError(f"no {STATE_FILE} in {run_dir}: train its stage 1 first (--steps = --stage1-steps)")
    state: dict[str, Any] = torch.load(path, map_location=dev, weights_only=False)
    done, s1 = state["step"], state["options"]["stage1_steps"]
    if state["stage"] != 1 or done != s1:
        raise ValueError(
            f"{path} is at step {done} of stage {state['stage']}; a shared stage 1 must end at {s1}"
        )
    return state


def _freeze_for_stage2(net: Diff3MNet, opts: TrainOptions) -> None:
    left_out = [] if opts.stage2_masked_branch else net.masked_branch()
    for module in [*net.frozen_in_stage2(), *left_out]:
        module.requires_grad_(False)


def _optimizer(net: Diff3MNet, stage: int, opts: TrainOptions, dev: torch.device) -> torch.optim.Optimizer:
    if stage == 1:
        params = [p for m in [*net.main_unet(), net.emb_norm] for p in m.parameters()]
    else:
        params = [p for p in net.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params}]
    if stage == 2 and opts.ehr_lr_scale != 1:  # one group otherwise, as states written before the option
        ehr = {id(p) for m in net.ehr_pathway() for p in m.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in ehr]},
            {"params": [p for p in params if id(p) in ehr], "lr": opts.lr * opts.ehr_lr_scale},
        ]
    # one fused kernel per step on CUDA instead of several per parameter
    return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay, fused=dev.type == "cuda")


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))  # warm-up so short runs are not dominated by the init
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - d)


def _save_state(
    path: Path,
    net: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: torch.Generator,
    step: int,
    stage: int,
    opts: TrainOptions,
    encoder: EhrEncoder,
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "net": net.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "rng": rng.get_state(),
            "step": step,
            "stage": stage,
            "options": asdict(opts),
            "encoder": encoder.to_dict(),
        },
        tmp,
    )
    tmp.replace(path)
