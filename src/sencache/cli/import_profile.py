"""`sencache import-profile FILE --latent-shape C F H W --model-class NAME --out profile.json`: the SenCache
authors' sensitivity table (``sensitivity_wan21.npz`` and the like) as a sencache profile, in RMS units."""

from __future__ import annotations

from pathlib import Path

from sencache.core.profile import SensitivityProfile
from sencache.core.reference_table import REFERENCE_LATENTS
from sencache.errors import SenCacheError


def add_cli(subparsers) -> None:
    """Register ``sencache import-profile`` and its options on ``subparsers``."""
    known = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in REFERENCE_LATENTS.items())
    p = subparsers.add_parser(
        "import-profile", help="import the paper authors' sensitivity table (.npz) as a profile",
        description="Convert a reference-implementation sensitivity table (timesteps with J_x_norm/J_t_norm, or one "
                    "raw (samples, steps, 2) array) to a sencache profile: J_x unchanged, J_t divided by "
                    "sqrt(C*F*H*W) of the latent it was measured on, failed (zero) raw entries left out.")
    p.add_argument("table", help=".npz file from the reference implementation")
    p.add_argument("--latent-shape", type=int, nargs=4, required=True, metavar=("C", "F", "H", "W"),
                   help=f"the latent the table was measured on ({known})")
    p.add_argument("--model-class", required=True,
                   help="the transformer class it belongs to, e.g. WanTransformer3DModel, "
                        "CogVideoXTransformer3DModel, LTXVideoTransformer3DModel")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    """``sencache import-profile``: convert the reference table, write the profile and say what was converted."""
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise SenCacheError(f"--out must end in .json (got {out})")
    profile = SensitivityProfile.from_reference(args.table, tuple(args.latent_shape), args.model_class)
    profile.save(out)
    conv = profile.metadata["reference_table"]
    print(f"read {conv['source_arrays']} from {args.table}: {len(profile.timesteps)} timesteps "
          f"{min(profile.timesteps):g}..{max(profile.timesteps):g}")
    print(f"J_x {conv['jx']}; J_t {conv['jt']}")
    if conv["dropped_timesteps"]:
        print(f"left out {len(conv['dropped_timesteps'])} timestep(s) with no measurement: "
              f"{', '.join(f'{t:g}' for t in conv['dropped_timesteps'])}")
    print(f"wrote {out} (no stored trajectories: use a fixed eps or a preset; budget mode needs `sencache calibrate`)")
    return 0
