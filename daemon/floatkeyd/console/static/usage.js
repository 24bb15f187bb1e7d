// floatkey console: the Seat usage chart, drawn with the vendored uPlot (static/vendor).
// The page shows the same figures as a table without this script.
"use strict";

const box = document.getElementById("usage-chart");
if (box && window.uPlot) {
  const data = JSON.parse(box.dataset.usage);
  // Denials are marked where they happened, at the seats that would have served all.
  const denied = data.t.map((_, i) => (data.denied[i] > 0 ? data.demand[i] : null));
  const stepped = window.uPlot.paths.stepped({ align: 1 });
  const options = {
    width: Math.max(box.clientWidth, 320),
    height: 320,
    scales: {
      x: { time: true, range: () => [Math.min(data.from, data.t[0]), data.to] },
      y: { range: (_u, _min, max) => [0, Math.max(max, 1) * 1.15] },
    },
    axes: [{}, { label: "seats" }],
    series: [
      {},
      {
        label: "Peak in use",
        stroke: "#0f766e",
        width: 2,
        fill: "rgba(15, 118, 110, 0.12)",
        paths: stepped,
      },
      { label: "Average in use", stroke: "#475569", width: 1, dash: [4, 4], paths: stepped },
      { label: "Licensed seats", stroke: "#b45309", width: 2, paths: stepped },
      {
        label: "Denied (seats that would have served all)",
        stroke: "#b91c1c",
        paths: () => null,
        points: { show: true, size: 9, fill: "#b91c1c", stroke: "#b91c1c" },
      },
    ],
  };
  box.classList.add("is-drawn");
  new window.uPlot(options, [data.t, data.peak, data.average, data.seats, denied], box);
}
