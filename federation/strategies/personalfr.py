"""PersonalFR (partial compression): the encoder stays on the client, the decoder is federated, and
a client trains and sends only the decoder rows of the items it interacted with. Dense decoder
parameters are averaged over the round's clients, each item row over the clients that hold it
(``federation.strategies.aggregation.personalfr_rows``). The product's default strategy."""
from __future__ import annotations

from federation.strategies.base import Strategy


class PersonalFR(Strategy):
    name = "personalfr"
    summary = ("encoder personal; dense decoder averaged; item rows averaged over the clients holding the item "
               "(partial compression: a client sends only its own items' rows)")
    paper = "PersonalFR: personal encoders, a federated decoder, partial compression"
    closed_form = True
