"""Planes larger than the encoder: a grid of tiles with halo, prompts decoded on the tile
where they are most central, and objects that cross tiles followed until they are whole."""
