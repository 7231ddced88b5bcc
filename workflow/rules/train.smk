rule train:
    input:
        f"{RESULTS}/pairs/manifest.json",
    output:
        f"{RESULTS}/train/{{arm}}/final.pt",
    resources:
        gpu=1,
    shell:
        "rfpp train --profile {PROFILE} --arm {wildcards.arm}"
