"""The hand-written part of docs/algorithms.md: the notation and the seven classic algorithms
derived from scratch, in the notation of the generated formulas (grape_evo/objective/symbolic.py).
"""

INTRO = r"""
## Notation

A prompt $x$ gets completions $o_i$ of $|o_i|$ tokens $o_{i,t}$. $\pi_\theta$ is the policy
being trained, $\pi_{\mathrm{old}}$ the policy that sampled the batch, $\pi_{\mathrm{ref}}$ a
frozen reference (the SFT model). A batch holds $B$ completions, $N_{\mathrm{tok}}$ tokens in
all; on-policy methods sample a group of $G$ completions per prompt. $R_i$ is the reward of
completion $i$ and $\mu_G$, $\sigma_G$ the mean and standard deviation of its group's rewards.
Per token, $\log\pi_\theta$ is short for $\log\pi_\theta(o_{i,t} \mid x, o_{i,<t})$,
$r_{i,t} = \pi_\theta / \pi_{\mathrm{old}}$ is the importance ratio and
$d_{i,t} = \log\pi_\theta - \log\pi_{\mathrm{ref}}$ the log-ratio to the reference. A
preference pair has a chosen $y_w$ and a rejected $y_l$ completion with sequence log-ratios
$\Delta_w, \Delta_l$ ($\Delta = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)$, summed over
tokens). Every $\mathcal{L}$ is a loss to minimise; $\operatorname{sg}[\cdot]$ stops the
gradient and $\sigma$ is the logistic function.

## Seven algorithms from scratch

**SFT.** Given demonstrations $(x, o)$, maximise their likelihood:

$$
\mathcal{L}_{\mathrm{SFT}} = -\frac{1}{N_{\mathrm{tok}}} \sum_{i=1}^{B} \sum_{t=1}^{|o_i|}
  \log\pi_\theta(o_{i,t} \mid x, o_{i,<t})
$$

It imitates: it needs demonstrations and cannot exceed them.

**Rejection sampling.** With a reward instead of demonstrations, sample $G$ completions per
prompt, keep the best and imitate it:

$$
\mathcal{L}_{\mathrm{RS}} = -\frac{1}{N_{\mathrm{tok}}} \sum_{i=1}^{B} \sum_{t=1}^{|o_i|}
  \mathbb{1}\left[R_i = \max_G R\right] \log\pi_\theta
$$

It improves beyond any demonstration, but learns nothing from the samples it discards and never
pushes bad completions down.

**REINFORCE.** Maximise the expected reward $J(\theta) = \mathbb{E}_{o \sim \pi_\theta}[R(o)]$
directly. Since $\nabla_\theta \pi_\theta = \pi_\theta \nabla_\theta \log\pi_\theta$,

$$
\nabla_\theta J = \mathbb{E}_{o \sim \pi_\theta}\left[R(o)\, \nabla_\theta \log\pi_\theta(o)\right],
  \qquad \log\pi_\theta(o) = \sum_{t} \log\pi_\theta(o_t \mid x, o_{<t}),
$$

so the loss $-R_i \sum_t \log\pi_\theta$, averaged over samples, has this gradient. Any baseline
$b$ that does not depend on $o_i$ may be subtracted: the advantage $A_i = R_i - b$ keeps the
gradient unbiased ($\mathbb{E}[\nabla_\theta \log\pi_\theta] = 0$) and lowers its variance.
Every on-policy method below is this estimator with a different advantage $A$, a different
limit on how far an update may move from $\pi_{\mathrm{old}}$, and a different average over
tokens.

**TRPO.** A policy-gradient step uses its batch once, and a step too large can ruin the policy.
Samples from $\pi_{\mathrm{old}}$ can be reused through importance weights: the surrogate

$$
\mathcal{L}_{\mathrm{IS}}(\theta) =
  -\mathbb{E}_{o \sim \pi_{\mathrm{old}}}\left[r_{i,t} A_{i,t}\right]
$$

has the policy gradient at $\theta = \theta_{\mathrm{old}}$ but is only trustworthy near it.
TRPO minimises it subject to $\mathrm{KL}(\pi_{\mathrm{old}} \,\|\, \pi_\theta) \le \delta$: a
natural-gradient step (conjugate gradient on Fisher-vector products) scaled to the KL budget,
then a backtracking line search. Per-token advantages come from a learned critic $V$ through
generalised advantage estimation,
$A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}$ with
$\delta_t = R_t + \gamma V_{t+1} - V_t$, where the token reward $R_t$ is the outcome reward on
the last token (plus any per-token penalty).

**PPO.** Replaces the constraint by a clipped ratio, a first-order method:

$$
\ell_{i,t} = -\min\left(r_{i,t} A_{i,t},\
  \operatorname{clip}(r_{i,t}, 1 - \epsilon, 1 + \epsilon)\, A_{i,t}\right)
$$

Once the ratio leaves $[1 - \epsilon, 1 + \epsilon]$ in the direction the advantage favours,
the gradient is zero, so several epochs on one batch stay close to $\pi_{\mathrm{old}}$. For
language models (InstructGPT) the reward carries a per-token penalty towards the reference,
$R_i - \beta \sum_t d_{i,t}$, and the critic is a second network trained alongside.

**GRPO.** Drops the critic: the group of $G$ completions of the same prompt is the baseline,

$$
A_i = \frac{R_i - \mu_G}{\sigma_G + \varepsilon}
$$

for every token of $o_i$, with PPO's clipped surrogate, the reference KL moved from the reward
into the loss as the non-negative estimator $e^{-d_{i,t}} + d_{i,t} - 1$, and each sequence's
token losses averaged before averaging over the batch. Its successors each change one box:
Dr. GRPO drops $\sigma_G$ and the per-sequence length normalisation, DAPO raises the upper clip
and averages over all tokens, GSPO clips one length-normalised ratio per sequence.

**DPO.** With preference pairs instead of rewards, RLHF maximises
$\mathbb{E}[R] - \beta\, \mathrm{KL}(\pi_\theta \,\|\, \pi_{\mathrm{ref}})$, whose optimum is
$\pi^*(y \mid x) \propto \pi_{\mathrm{ref}}(y \mid x)\, e^{R(x, y)/\beta}$. Solving for the
reward, $R = \beta \log(\pi^* / \pi_{\mathrm{ref}}) + \beta \log Z(x)$, and substituting it into
the Bradley-Terry model $P(y_w \succ y_l) = \sigma(R_w - R_l)$ cancels $Z(x)$ and leaves a loss
on the policy alone:

$$
\ell_{(y_w, y_l)} = -\log\sigma\left(\beta\,(\Delta_w - \Delta_l)\right)
$$

No reward model and no sampling. Its relatives change the function of the gap (IPO: squared
towards $1/(2\beta)$; SLiC: hinge; SimPO: length-normalised, without reference) or where the
pairs come from (online DPO: sampled from the current policy).
"""
