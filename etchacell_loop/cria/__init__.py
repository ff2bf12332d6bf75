"""CRIA: one slice's volunteer tracings → one consensus (Spiers et al. 2021, sections 2.4 and 4.8).

``joining`` closes each volunteer's strokes into loops, ``raster`` fills them (even-odd), and
``consensus`` stacks the fills into a height map, keeps where enough volunteers agree, and draws the
envelope band and the confidence map. This package is the one place where tracings become a mask.
"""
