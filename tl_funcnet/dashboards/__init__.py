"""Look, don't read: cards of what functional networks and SAE features respond to, interactive token-labelled
figures, and self-contained HTML reports.

>>> from tl_funcnet.dashboards import Report, network_cards, patching_heatmap
>>> cards = network_cards(model, networks, acts, eval_texts=load_corpus("evaluation")[:4])
>>> report = Report("My model"); report.section("Networks").cards(cards); report.save("report.html")
"""

from .cards import Card as Card
from .cards import feature_cards as feature_cards
from .cards import network_cards as network_cards
from .cards import pick_features as pick_features
from .contexts import Context as Context
from .contexts import token_strings as token_strings
from .contexts import top_contexts as top_contexts
from .figures import bars as bars
from .figures import curves as curves
from .figures import network_sizes as network_sizes
from .figures import patching_heatmap as patching_heatmap
from .figures import position_labels as position_labels
from .html import colored_tokens as colored_tokens
from .report import Report as Report
from .report import Section as Section

__all__ = ["Card", "Context", "Report", "Section", "bars", "colored_tokens", "curves", "feature_cards",
           "network_cards", "network_sizes", "patching_heatmap", "pick_features", "position_labels",
           "token_strings", "top_contexts"]
