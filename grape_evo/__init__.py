"""grape-evo: Generalized Relative Advantage Policy Evolution.

Every RL post-training objective as one point in a space of small components, and a search
engine that trains small policies to find which objective works best.
"""

__version__ = "0.1.0"
