"""Compile the Triton kernels ahead of time for an H100 (sm_90) — no GPU needed.

Run as a script in a process *without* ``TRITON_INTERPRET`` (the interpreter replaces
``@triton.jit`` functions and compiles nothing): ``python _compile_kernels.py NAME...``.
Prints one line per kernel and exits 1 if any failed to compile, 3 if this Triton cannot
target CUDA here (no bundled ptxas...), so the calling test can skip.
"""

import sys


def _logprob_kernels(dtype: str):
    from agent_lightning.kernels import token_logprobs as k

    precision = dict(PRECISION="ieee" if dtype == "fp32" else "tf32", UPCAST=False)
    tiles = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64)
    ptrs = dict(h_ptr=f"*{dtype}", w_ptr=f"*{dtype}", b_ptr=f"*{dtype}", tgt_ptr="*i64")
    fwd_sig = dict(ptrs, logp_ptr="*fp32", lse_ptr="*fp32", ent_ptr="*fp32", N="i32", V="i32", H="i32",
                   stride_h="i32", stride_w="i32", pre="fp32", post="fp32")
    grad_sig = dict(ptrs, lse_ptr="*fp32", ent_ptr="*fp32", g_lp_ptr="*fp32", g_ent_ptr="*fp32",
                    out_ptr=f"*{dtype}", row0="i32", N="i32", col0="i32", V="i32", H="i32", stride_h="i32",
                    stride_w="i32", stride_out="i32", pre="fp32", post="fp32")
    acc_sig = dict(a_ptr=f"*{dtype}", b_ptr=f"*{dtype}", c_ptr="*fp32", M="i32", K="i32", Nc="i32",
                   stride_a="i32", stride_b="i32", stride_c="i32")
    return {
        f"fwd_{dtype}": (k._fwd_kernel, fwd_sig, dict(HAS_BIAS=True, HAS_SOFTCAP=True, WANT_ENT=True, **tiles, **precision)),
        f"grad_{dtype}": (k._grad_logits_kernel, grad_sig,
                          dict(HAS_BIAS=True, HAS_SOFTCAP=True, USE_ENT=True, **tiles, **precision)),
        f"acc_{dtype}": (k._accumulate_at_b_kernel, acc_sig, dict(BLOCK_M=64, BLOCK_K=32, BLOCK_NC=64, **precision)),
    }


def _gae_kernels():
    from agent_lightning.kernels import gae as g

    sig = dict(rewards_ptr="*fp32", values_ptr="*fp32", mask_ptr="*u8", cu_ptr="*i32", adv_ptr="*fp32",
               ret_ptr="*fp32", gamma="fp32", gamma_lam="fp32")
    return {"gae": (g._gae_packed_kernel, sig, dict(BLOCK=1024))}


def main(names: list[str]) -> int:
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        print(f"cannot import triton's compiler: {exc}")
        return 3
    kernels = {**_logprob_kernels("fp32"), **_logprob_kernels("bf16"), **_gae_kernels()}
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    for name in names or sorted(kernels):
        fn, sig, consts = kernels[name]
        signature = dict(sig, **{key: "constexpr" for key in consts})
        try:
            triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=target)
        except FileNotFoundError as exc:  # ptxas or the CUDA toolchain pieces triton ships
            print(f"{name}: cannot target CUDA here: {exc}")
            return 3
        except Exception as exc:  # noqa: BLE001 - report every kernel
            failed += 1
            print(f"{name}: FAILED {type(exc).__name__}: {exc}")
        else:
            print(f"{name}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
