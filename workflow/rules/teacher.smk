rule teacher:
    output:
        f"{RESULTS}/teacher/teacher.pt",
    shell:
        "rfpp teacher --profile {PROFILE} --no-progress"
